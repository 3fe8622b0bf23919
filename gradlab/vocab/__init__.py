"""The vocabulary every floor shares: errors, the component registry and specs, the quantity declarations, YAML reading. Imports nothing heavy: no torch, no pandas."""

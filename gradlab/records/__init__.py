"""The run directory: its layout, writing (tables and meta.json) and reading. No torch."""

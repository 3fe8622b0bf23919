"""The experiment config: its schema, loading and `--set`, the `expect:`/`claims:` sections, the JSON Schema for editors."""

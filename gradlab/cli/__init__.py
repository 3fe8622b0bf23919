"""The command line: Typer parsing over the floors below."""

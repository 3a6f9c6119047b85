"""Built-in sweep launchers."""

"""adbench test plugin: registered only through entry points (no decorator, no --plugin)."""

"""Built-in behaviour, written as plugins of the public hooks."""

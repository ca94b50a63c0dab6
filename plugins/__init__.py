"""Built-in plugins: every module in these packages is registered as a plugin."""

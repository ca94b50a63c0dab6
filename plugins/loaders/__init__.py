"""Built-in model loader and data sources."""

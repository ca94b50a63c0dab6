"""Built-in metrics, one plugin module per metric family."""

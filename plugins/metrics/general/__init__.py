"""General-purpose metrics: clean accuracy."""

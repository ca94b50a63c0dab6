"""Small models that robaudit ships and trains with its own recipe (no downloads)."""

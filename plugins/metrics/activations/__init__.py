"""Activation-pattern metrics (Khaitan 2024)."""

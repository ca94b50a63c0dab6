"""Numerical primitives shared by metrics (typed, tested on their own)."""

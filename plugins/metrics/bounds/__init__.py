"""Bounds read from the weights alone (Szegedy et al. 2014 §4.3)."""

"""Semantics of units of the feature layer (Szegedy et al. 2014 §3)."""

"""Topology of classification regions (Fawzi et al. 2018): connectivity and convexity."""

"""Decision-boundary curvature (Fawzi et al. 2018)."""

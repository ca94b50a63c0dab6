"""Deformation of the feature map (Ghorbani & Zou 2017): rank order, spheres, intertwinedness."""

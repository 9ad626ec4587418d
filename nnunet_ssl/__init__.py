"""Semi-supervised learning trainers for nnU-Net v2 (see README.md)."""

# the single source of the version: setup.py reads this line without importing the package
__version__ = "0.2.0.dev0"

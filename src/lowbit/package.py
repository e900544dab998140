"""lowbit as an installed package: its version (recorded in plans, model metadata and reports).

A module of its own, so that the modules that record the version import it from here, not from
the package root that imports them."""

__version__ = "0.1.0"
"""The version of this lowbit."""

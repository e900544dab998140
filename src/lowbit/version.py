"""lowbit's version, in a module of its own: the modules that record it (plans, model metadata,
reports) import it from here, not from the package root that imports them."""

__version__ = "0.1.0"

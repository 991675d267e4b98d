"""The release, in a module of its own: the modules inside the package read it without
importing the package's top, which would import everything (the app factory included)."""

__version__ = "0.1.0"

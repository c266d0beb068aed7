"""nbopt's version (its own module, so that nbopt's modules can read it without importing the package)."""
__version__ = "0.1.0"

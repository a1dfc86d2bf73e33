"""The timmlens version, in a module of its own: saved files and runs record it
without importing the package's front door."""

__version__ = "0.1.0"

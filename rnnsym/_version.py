"""The version of rnnsym."""

__version__ = "0.1.0"

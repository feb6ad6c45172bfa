"""gcnshrink: compress trained skeleton graph convolutional networks."""

__version__ = "0.1.0"

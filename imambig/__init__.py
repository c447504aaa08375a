"""imambig: privacy-preserving image sharing via ambiguated sparse codes."""

__version__ = "0.1.0"

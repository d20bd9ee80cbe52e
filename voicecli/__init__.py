"""voicecli: a fully local, full-duplex command-line voice assistant."""

__version__ = "0.1.0"

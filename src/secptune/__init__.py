"""secptune: privacy-preserving prompt tuning of transformer language models under two-party
secure computation."""

__version__ = "0.1.0"

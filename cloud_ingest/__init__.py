"""The cloud ingest service: verifies, deduplicates, stores and serves what vans send."""

__version__ = "0.1.0"

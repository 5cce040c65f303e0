"""GNSS ingestion: NMEA bytes from a receiver to clean, validated fixes."""

from firmware_agent.contract.fix import Fix, FixMode

__all__ = ["Fix", "FixMode"]

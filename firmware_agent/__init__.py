"""The in-van agent of the fleet gateway.

Pure logic (NMEA decoding, fix filtering, ...) lives in plain modules fed with data and a
clock; I/O (serial, MQTT, SQLite, GPIO) sits at the edges behind small interfaces.
"""

__version__ = "0.1.0"

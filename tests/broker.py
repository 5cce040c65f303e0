"""The private Mosquitto of the tests: :mod:`simulator.broker`, the one the demo uses."""

from simulator.broker import MOSQUITTO, BrokerError, Mosquitto, free_port

__all__ = ["MOSQUITTO", "BrokerError", "Mosquitto", "free_port"]

"""The agent's exception tree.

Every error the agent raises derives from :class:`AgentError`. Specific errors also
derive from the builtin they resemble, so callers may catch either (the gpiozero idiom).
Third-party errors are translated at the boundary with ``raise ... from err``.
"""


class AgentError(Exception):
    """Root of every error raised by :mod:`firmware_agent`."""


class ConfigError(AgentError, ValueError):
    """A setting is missing, malformed or out of range."""


class DeviceError(AgentError, OSError):
    """A hardware device (serial port, scanner, GPIO) could not be used."""


class DeviceUnavailableError(DeviceError):
    """The device is absent or stopped answering (unplugged, permission denied)."""

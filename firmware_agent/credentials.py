"""Key files handed over by systemd (``LoadCredential=``).

The shipped unit loads the van's TLS files as credentials: systemd reads them as root
(the key stays root-owned, 0600, in /etc/fleet-agent/tls) and gives the agent a private
copy in ``$CREDENTIALS_DIRECTORY``, readable by the service only. When that directory
holds a credential, the agent uses it instead of the path its settings name (which is
where systemd loaded it from); without the variable (a shell, a test) the settings'
paths are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# Setting (under [mqtt]) -> the credential name the unit gives it.
TLS_CREDENTIALS = {"tls_ca": "mqtt-tls-ca", "tls_cert": "mqtt-tls-cert", "tls_key": "mqtt-tls-key"}


def credential(name: str, configured: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name`` when it is a file there, else ``configured``."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / name
        if path.is_file():
            return path
    return configured

"""The ``fleet-agent`` command's entry point: the van's libraries first, then the CLI.

The distribution installs ``fleet-agent`` wherever it is installed, ingest's servers
included; the agent needs the ``van`` extra (a serial receiver's NMEA, GPIO, the TFLite
runtime). Without it, every command would die on an import with a traceback: this says
what to install instead, and exits 2.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# What every fleet-agent command may need and only the `van` extra installs.
VAN_LIBRARIES = (
    "pynmea2",
    "serial",
    "serial_asyncio_fast",
    "gpiozero",
    "pydantic",
    "pyubx2",
)


def main(argv: Sequence[str] | None = None) -> int:
    missing = [name for name in VAN_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"fleet-agent: the van's libraries are not installed ({', '.join(missing)}): "
            "pip install 'fleet-gateway[van]'",
            file=sys.stderr,
        )
        return 2
    from firmware_agent.cli import main as cli_main  # noqa: PLC0415 (after the check)

    return cli_main(argv)

"""``fleet-ingest``: the cloud ingest service's command line.

The ingest service (MQTT workers, storage, HTTP API) is built in a later issue; until
then this entry point only reports its version, so that the console script the
distribution declares exists and says honestly what it holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cloud_ingest import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-ingest",
        description="Cloud ingest for the fleet gateway. No commands yet: the MQTT "
        "workers, storage and HTTP API arrive with the uplink work.",
    )
    parser.add_argument("--version", action="version", version=f"fleet-ingest {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

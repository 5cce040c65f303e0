"""``python -m simulator``: the same as the ``fleet-sim`` console script."""

import sys

from simulator.cli import main

sys.exit(main())

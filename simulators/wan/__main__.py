"""`python -m simulators.wan ...`: the `outpost sim wan` commands on their own."""

import sys

from simulators.wan.cli import main

sys.exit(main())

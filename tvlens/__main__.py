"""``python -m tvlens`` = the ``tvlens`` command."""

import sys

from tvlens.cli import main

sys.exit(main())

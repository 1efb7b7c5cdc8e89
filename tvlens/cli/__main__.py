"""``python -m tvlens.cli`` = the ``tvlens`` command."""

import sys

from tvlens.cli import main

sys.exit(main())

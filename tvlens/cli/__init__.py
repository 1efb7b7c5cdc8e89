"""The ``tvlens`` command line. Every command takes ``--json`` and then prints one JSON document."""

from tvlens.cli._main import main as main

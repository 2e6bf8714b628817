"""``python -m headstart``: the command line."""

import sys

from headstart.engine.cli import main

sys.exit(main())

"""`python -m app` is the `opd-lab` command, `app` subcommand included."""

import sys

from app.cli import main

sys.exit(main())

"""`python -m opd_lab_app` is the `opd-lab` command, `app` subcommand included."""

import sys

from opd_lab_app.cli import main

sys.exit(main())

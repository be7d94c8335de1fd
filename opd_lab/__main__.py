"""`python -m opd_lab` is the `opd-lab` command."""

import sys

from opd_lab.cli import main

sys.exit(main())

"""`python -m opd_lab` is the `opd-lab` command.

A SIGTERM that arrives while the command still imports its modules (seconds: torch) is
held, not obeyed at once, so a run being started and stopped at that instant (its
comparison died) still ends `stopped`, not as a process that vanished: see
`opd_lab.cli.main`'s `early_sigterm`.
"""

import signal
import sys

_sigterms: list[int] = []
signal.signal(signal.SIGTERM, lambda number, _frame: _sigterms.append(number))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a launcher may start it blocked

from opd_lab.cli import main  # noqa: E402 - after the handler: this import takes seconds

sys.exit(main(early_sigterm=_sigterms))

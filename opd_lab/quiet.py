"""Third-party progress bars and logs, silenced inside opd-lab's own commands.

transformers draws a "Loading weights" bar for every `from_pretrained` and a "Writing
model shards" bar for every `save_pretrained`; a compare of 12 runs printed 24 of them
between opd-lab's own lines. opd-lab's commands show one bar of their own per long step
(a lab build, a training run, a batch of compare runs), so the CLI calls
`silence_third_party()` before any command runs. The library alone (notebooks, your
own scripts) leaves these settings as they are.

The settings are environment variables, read by transformers and huggingface_hub when
they are imported, so they also reach the runs this process starts (launched runs,
compare workers); modules imported already are told directly.

Example:
    >>> silence_third_party()
    >>> os.environ["HF_HUB_DISABLE_PROGRESS_BARS"]
    '1'
"""

from __future__ import annotations

import os
import sys

QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' (it follows the hub's switch)
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' info and warning logs
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "WANDB_SILENT": "true",  # an experiment tracker's banner (opd_lab/tracking.py)
}


def silence_third_party() -> None:
    """Turn off third-party progress bars and info logs, in this process and the ones it starts."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ[name] = value
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

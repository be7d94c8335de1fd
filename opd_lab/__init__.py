"""opd-lab: teach and run on-policy distillation (OPD) of language models.

The library's nouns live in small modules: `tasks`, `tokenizer`, `models`, `generation`
(the one inference path), `losses` (every loss and both per-token signals), `train`
(the engine), `run_folder` (every file of a run), `runs` (background processes and
the run limit), `checkpoints`, `eval`, `feedback` (per-token teacher feedback),
`tokenview`, `plots`, `plots_kl` and `divergence_demo`; every multi-run study (`opd-lab
compare`, the recipes, continual learning) is in `studies`. See docs/architecture.md.
"""

__version__ = "0.1.0"

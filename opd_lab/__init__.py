"""opd-lab: teach and run on-policy distillation (OPD) of language models.

The library's nouns live in small modules: `tasks`, `tokenizer`, `models`, `generation`
(the one inference path), `losses`, `train` (the engine), `runs` (background jobs and
run folders), `eval`, `inspect` (per-token teacher feedback), `tokenview` and `plots`.
"""

__version__ = "0.1.0"

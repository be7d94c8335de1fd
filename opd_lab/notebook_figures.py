"""Notebook figures that survive an HTML export, offline.

A plotly figure shown in Jupyter carries only plotly's own mimetype by default, which
JupyterLab draws but `jupyter nbconvert --to html` drops: a shared export of a
workshop notebook would have no charts. `offline_figures()` makes every figure carry a
second, HTML copy as well, and puts plotly.js itself into the notebook once (the first
output of the cell that calls it), so the exported HTML draws every chart with no
network access.

Run once, in a notebook's first code cell:
    >>> from opd_lab.notebook_figures import offline_figures
    >>> offline_figures()  # doctest: +SKIP
"""

from __future__ import annotations

# JupyterLab and VS Code use the mimetype; exported HTML uses the "notebook" renderer's
# HTML, whose plotly.js is embedded once (not fetched from a CDN: "notebook_connected").
RENDERERS = "plotly_mimetype+notebook"


def offline_figures() -> None:
    """Show every plotly figure of this kernel with an offline HTML fallback (see the module docstring)."""
    import plotly.io as pio

    pio.renderers.default = RENDERERS

"""The opd-lab web app: a thin Gradio view over the library (`opd_lab`).

Start it with `opd-lab app` (see `opd_lab_app.main.serve`); build it without serving, for
tests or embedding, with `opd_lab_app.main.build_app()`. Every tab reads and writes run
folders through `opd_lab.runs` and `opd_lab.run_folder` only, so a page refresh or an
app restart reattaches to runs that are still training.
"""

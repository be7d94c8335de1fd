"""The `opd-lab` console command: the library's command line plus `opd-lab app`.

The library (`opd_lab`) never imports the app, so the app adds its own subcommand to
the library's parser (`opd_lab.cli.Command`). The console script and `python -m app`
run `main` here; every other subcommand is the library's.

Run:
    opd-lab app                                  # http://127.0.0.1:7860
    opd-lab app --host 0.0.0.0 --auth me:secret
"""

from __future__ import annotations

import argparse

from opd_lab.cli import Command
from opd_lab.cli import main as library_main


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", help="user:password required to open the app")
    parser.add_argument("--max-runs", type=int, default=None, help="most runs at once (default 3)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that ship their own code")
    parser.add_argument("--no-build", action="store_true", help="do not build the lab on start")


def _serve(args: argparse.Namespace) -> None:
    from app.main import serve  # gradio loads only for this subcommand

    serve(host=args.host, port=args.port, auth=args.auth, max_runs=args.max_runs,
          trust_remote_code=args.trust_remote_code, build=not args.no_build)


APP_COMMAND = Command("app", "the web app", _add_arguments, _serve)


def main(argv: list[str] | None = None) -> int:
    """`opd-lab ...`: the library's subcommands and `app`."""
    return library_main(argv, extra_commands=[APP_COMMAND])

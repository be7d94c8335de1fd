"""The `opd-lab` console command: the library's command line plus `opd-lab app`.

The library (`opd_lab`) never imports the app, so the app adds its own subcommand to
the library's parser (`opd_lab.cli.Command`). The console script and `python -m opd_lab_app`
run `main` here; every other subcommand is the library's.

Run:
    opd-lab app                                  # http://127.0.0.1:7860
    opd-lab app --host 0.0.0.0 --auth me:secret
    opd-lab app --host 0.0.0.0 --auth teacher:pw0 --auth ana:pw1 --instructor teacher
    opd-lab app --host 0.0.0.0 --auth-file logins.txt --tasks-dir ~/workshop-tasks
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from pathlib import Path

from opd_lab.cli import Command
from opd_lab.cli import main as library_main


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="a login required to open the app; repeat it for one login per attendee "
                             "(visible to other users of this machine in `ps`: prefer --auth-file)")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="a file of user:password lines, one login per attendee (kept out of `ps`)")
    parser.add_argument("--tasks-dir", metavar="FOLDER",
                        help="the .jsonl files attendees may train on (default: <data dir>/tasks); the app "
                             "opens no other file")
    parser.add_argument("--instructor", metavar="USER",
                        help="with --auth: the user who may stop, resume and delete every run; the others "
                             "only their own (default: the first --auth user)")
    parser.add_argument("--max-runs", type=int, default=None, help="most runs at once (default 3)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that ship their own code")
    parser.add_argument("--no-build", action="store_true", help="do not build the lab on start")


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or already taken on `host`, before anything is built.

    Raises:
        ValueError: naming the port and what to do.
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"--port: must be between 1 and 65535 (got {port})")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host {host}: not an address of this machine ({error.strerror or error}); "
                             "use 127.0.0.1, 0.0.0.0 (every address) or one of this machine's addresses") from None
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error}); "
                         "pick another port with --port") from None


def _serve(args: argparse.Namespace) -> None:
    check_port(args.host, args.port)
    if args.max_runs is not None and args.max_runs < 1:
        raise ValueError(f"--max-runs: must be at least 1 (got {args.max_runs})")
    auth = list(args.auth or [])
    if args.auth_file:
        from opd_lab_app.security import read_auth_file

        auth += read_auth_file(args.auth_file)
    if args.tasks_dir:
        from opd_lab_app.inputs import TASKS_DIR_VAR

        os.environ[TASKS_DIR_VAR] = str(Path(args.tasks_dir).expanduser().resolve())
    from opd_lab_app.main import serve  # gradio loads only for this subcommand

    serve(host=args.host, port=args.port, auth=auth or None, max_runs=args.max_runs,
          trust_remote_code=args.trust_remote_code, build=not args.no_build, instructor=args.instructor)


APP_COMMAND = Command("app", "the web app", _add_arguments, _serve)


def main(argv: list[str] | None = None) -> int:
    """`opd-lab ...`: the library's subcommands and `app`."""
    return library_main(argv, extra_commands=[APP_COMMAND])

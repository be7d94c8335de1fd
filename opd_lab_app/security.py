"""The app's doors: logins that slow down a guesser, passwords kept out of `ps`, no uploads.

- `LoginGuard` checks a login against the `--auth` / `--auth-file` users in constant
  time. Each wrong password for a user makes the next answer for that user wait a
  little longer (`FAILURE_DELAY_S` per recent failure, at most `MAX_DELAY_S`), and
  `LOCKOUT_FAILURES` failures within `WINDOW_S` lock that user out for `LOCKOUT_S`
  seconds, the right password included: 20 guesses no longer take 0.1 s. The waits
  are `asyncio.sleep`s, so nobody else's page waits for them.
- `read_auth_file` reads `user:password` lines from a file, so passwords need not be
  on the command line, where every user of the machine sees them in `ps`.
- `UploadGuard` answers the upload route before gradio does. The app takes no file
  from a browser (a config is pasted as text, tasks are the instructor's files), so
  every upload is refused on the server, oversized ones first (413), anything else
  as a type not on the list (415): no file is stored and no server path comes back.

Example:
    >>> guard = LoginGuard([("ana", "pw1")])
    >>> import asyncio; asyncio.run(guard.check("ana", "pw1"))
    True
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import defaultdict, deque
from pathlib import Path

FAILURE_DELAY_S = 0.5
MAX_DELAY_S = 4.0
LOCKOUT_FAILURES = 5
WINDOW_S = 300.0
LOCKOUT_S = 60.0
UPLOAD_PATHS = ("/gradio_api/upload", "/upload")
ALLOWED_UPLOAD_TYPES: tuple[str, ...] = ()  # file name endings the app accepts (none: nothing asks for a file)
MAX_UPLOAD_BYTES = 64 * 1024


class LoginGuard:
    """The users' passwords, with throttling per user; `check` is gradio's `auth`."""

    def __init__(self, credentials: list[tuple[str, str]], clock=time.monotonic, sleep=asyncio.sleep):
        self.passwords = dict(credentials)
        self.failures: dict[str, deque] = defaultdict(deque)
        self.locked_until: dict[str, float] = {}
        self.clock, self.sleep = clock, sleep

    def _recent(self, user: str) -> deque:
        failures, now = self.failures[user], self.clock()
        while failures and now - failures[0] > WINDOW_S:
            failures.popleft()
        return failures

    async def check(self, user: str, password: str) -> bool:
        """Whether `password` is `user`'s (gradio's `auth`: pass this bound method, which
        gradio sees as a coroutine function and awaits)."""
        failures = self._recent(user)
        if failures:
            await self.sleep(min(MAX_DELAY_S, FAILURE_DELAY_S * len(failures)))
        if self.clock() < self.locked_until.get(user, 0.0):
            return False
        expected = self.passwords.get(user)
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
        if ok:
            failures.clear()
            return True
        failures.append(self.clock())
        if len(failures) >= LOCKOUT_FAILURES:
            self.locked_until[user] = self.clock() + LOCKOUT_S
            failures.clear()
        return False


def read_auth_file(path: str | Path) -> list[str]:
    """The `user:password` lines of an auth file (blank lines and `#` comments skipped).

    Raises:
        ValueError: the file cannot be read, or a line is not `user:password` (naming the line).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--auth-file {path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"--auth-file {path}, line {number}: expected user:password")
        entries.append(f"{user.strip()}:{password}")
    if not entries:
        raise ValueError(f"--auth-file {path}: no user:password line")
    return entries


class UploadGuard:
    """ASGI middleware refusing uploads on the server: too large (413), or a type not on
    `allowed_types` (415; with none allowed, every upload)."""

    def __init__(self, app, allowed_types: tuple[str, ...] = ALLOWED_UPLOAD_TYPES,
                 max_bytes: int = MAX_UPLOAD_BYTES):
        self.app, self.allowed_types, self.max_bytes = app, tuple(t.lower() for t in allowed_types), max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].rstrip("/").endswith(
                UPLOAD_PATHS):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        if length > self.max_bytes:
            return await _refuse(send, 413, f"upload refused: larger than {self.max_bytes // 1024} KB")
        body = bytearray()  # no length given (chunked): read it, up to the limit
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _refuse(send, 413, f"upload refused: larger than {self.max_bytes // 1024} KB")
            if not message.get("more_body"):
                break
        names = [name.lower() for name in _file_names(bytes(body))]
        if not self.allowed_types or not names or not all(name.endswith(self.allowed_types) for name in names):
            kinds = ", ".join(self.allowed_types) or "none: this app takes no files"
            return await _refuse(send, 415, f"upload refused: file types accepted: {kinds}")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def _file_names(body: bytes) -> list[str]:
    """The `filename="..."` values of a multipart body."""
    names, marker = [], b'filename="'
    start = body.find(marker)
    while start >= 0:
        end = body.find(b'"', start + len(marker))
        if end < 0:
            break
        names.append(body[start + len(marker):end].decode("utf-8", errors="replace"))
        start = body.find(marker, end)
    return names


async def _refuse(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})

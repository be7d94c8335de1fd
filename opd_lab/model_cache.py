"""A cache of de-quantized GGUF models, so a `.gguf` file is de-quantized once.

transformers reads a `.gguf` file by de-quantizing every tensor, which takes about
27 s for SmolLM2-135M on two CPU cores. The first load saves the result with
`save_pretrained` (model and tokenizer, safetensors, float32) under
`<data dir>/models/<gguf stem>-<key>/`; later loads of the same file read that folder
in seconds. The key hashes the file's absolute path, size and modification time, so a
replaced or edited file gets a new folder and is never served stale.

A cache folder appears only complete: it is written to `.partial-<name>-<pid>` and
renamed when `save_pretrained` has finished, under a lock per entry. A crash leaves a
partial folder that no load ever reads; the next writer of that entry removes it.

Example:
    >>> folder = cached_folder(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))  # doctest: +SKIP
    >>> folder is None or (folder / "model.safetensors").exists()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opd_lab.paths import data_dir

# Written last into a cache folder: its presence says the folder is complete.
COMPLETE_MARKER = "source.txt"


def models_dir() -> Path:
    """The folder holding one sub-folder per cached model (`<data dir>/models`)."""
    return data_dir() / "models"


def entry_name(gguf: Path) -> str:
    """The cache folder's name for `gguf`: its stem and a key of path, size and mtime.

    Example:
        >>> entry_name(Path("/no/such/file.gguf"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: [Errno 2] No such file or directory: '/no/such/file.gguf'
    """
    resolved = gguf.expanduser().resolve()
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}\n{stat.st_size}\n{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{resolved.stem}-{key}"


def cached_folder(gguf: Path) -> Path | None:
    """The complete cache folder of `gguf`, or None when there is none yet."""
    folder = models_dir() / entry_name(gguf)
    return folder if (folder / COMPLETE_MARKER).is_file() else None


def partial_folders(gguf: Path) -> list[Path]:
    """Leftover temporary folders of `gguf`'s entry (a crashed or running writer)."""
    root = models_dir()
    return sorted(root.glob(f".partial-{entry_name(gguf)}-*")) if root.is_dir() else []


@contextmanager
def writing(gguf: Path) -> Iterator[Path | None]:
    """Hold the entry's lock and yield a fresh temporary folder to `save_pretrained` into.

    On a clean exit the folder is marked complete and renamed into place. Yields None
    when another process completed the entry while this one waited for the lock: there
    is nothing to write. On an error nothing is left behind and the error propagates.
    Partial folders of earlier writers are removed first: holding the lock, no other
    writer of this entry is running.
    """
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = entry_name(gguf)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached_folder(gguf) is not None:
            yield None
            return
        for leftover in partial_folders(gguf) + _stale_entries(gguf):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = root / f".partial-{name}-{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
            (staging / COMPLETE_MARKER).write_text(str(gguf.expanduser().resolve()), encoding="utf-8")
            shutil.rmtree(root / name, ignore_errors=True)  # an entry whose marker was deleted by hand
            os.replace(staging, root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _stale_entries(gguf: Path) -> list[Path]:
    """Complete entries made from the same path before the file changed (other size or mtime)."""
    source, name = str(gguf.expanduser().resolve()), entry_name(gguf)
    stale = []
    for folder in models_dir().glob(f"{gguf.expanduser().resolve().stem}-*"):
        marker = folder / COMPLETE_MARKER
        if folder.name != name and marker.is_file() and marker.read_text(encoding="utf-8") == source:
            stale.append(folder)
    return stale

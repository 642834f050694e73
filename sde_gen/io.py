"""Crash-safe file output: write to a temporary file in the same directory, then rename.

A rename within one file system is atomic, so a reader (or a resumed run) sees either the old
complete file or the new complete file, never a truncated one.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from typing import Iterator


def _create_temporary(directory: str, name: str) -> str:
    """Create an empty, new file `.<name>.<random>.tmp` in `directory` and return its path.

    Unlike `tempfile.mkstemp` (always mode 0600) the file is opened with mode 0666, so the
    process's umask (and any default ACL of the folder) gives it the same permissions as a file
    written with `open(path, "w")`: outputs stay readable by the group or others as usual.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # another writer drew the same name: draw again
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {os.path.join(directory, name)!r}")


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    The file gets the permissions of any newly created file (0666 minus the umask). On an
    exception the temporary file is removed and `path` is left untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = _create_temporary(directory, os.path.basename(path))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def atomic_save_figure(fig, path: str, **kwargs) -> None:
    """Save a matplotlib figure to `path` atomically (format from the extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=kwargs.pop("dpi", 110), **kwargs)

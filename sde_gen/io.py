"""Crash-safe file output: write to a temporary file in the same directory, then rename.

A rename within one file system is atomic, so a reader (or a resumed run) sees either the old
complete file or the new complete file, never a truncated one.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
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

"""Atomic file writes: nothing bertlab writes is ever left half-written.

Each writer puts the bytes in a temp file in the target's folder, fsyncs it, then ``os.replace``s
it over the target, so a reader (or a run killed mid-write) sees the old file or the new one,
never a mix. Checkpoint folders have their own swap (``bertlab.checkpoint``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``write_bytes`` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2, **dumps_kwargs) -> Path:
    """``obj`` as indented JSON plus a newline, written atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def write_jsonl(path: str | os.PathLike, rows, **dumps_kwargs) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, "".join(json.dumps(row, **dumps_kwargs) + "\n" for row in rows))

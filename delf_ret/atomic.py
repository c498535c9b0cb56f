"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file next to ``path``; renames it onto ``path`` on success.

  If the body raises (or the process dies), ``path`` is untouched and the
  temporary file is removed (or, after a crash, left with a ``.tmp`` suffix that
  readers ignore).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as handle:
      yield handle
      handle.flush()
      os.fsync(handle.fileno())
    os.replace(tmp_name, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_name)
    raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_write(path, "wb") as handle:
    handle.write(data)

"""Atomic file writes: write to a temporary file beside the target, then rename.

The temporary file is ``.<name>.delfret-<random>.tmp``: the ``.delfret-`` part
marks it as delf-ret's, and :func:`remove_leftovers` removes only files named
so, never a user's ``.notes.tmp``. (Temporary files of delf-ret versions before
the mark are no longer recognised and stay; readers ignore them.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import stat
import tempfile
import time
from typing import IO
from typing import Callable
from typing import Iterator

LEFTOVER_AGE_SECONDS = 60.0  # A temporary file untouched this long belongs to a dead run.
TEMP_MARK = ".delfret-"  # In the name of every temporary file delf-ret writes.
# .<target name>.delfret-<8 characters of mkstemp>.tmp
TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARK) + r"[a-z0-9_]{8}\.tmp", re.DOTALL)


def current_umask() -> int:
  """The process's file-mode creation mask.

  Read from /proc/self/status where the kernel lists it (Linux 4.7 and later), so
  other threads never see it changed; elsewhere set and restored at once (the only
  portable way to read it).
  """
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def respect_umask(path: str | os.PathLike, directory: bool = False) -> None:
  """Gives a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the usual
  permissions: 0666 (files) or 0777 (folders) minus the umask, as open() and mkdir() would."""
  os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def remove_leftovers(
  folder: str | os.PathLike,
  log: Callable[[str], None] | None = None,
  min_age_seconds: float = LEFTOVER_AGE_SECONDS,
) -> int:
  """Deletes temporary files of atomic writes that a killed run left in ``folder``.

  Only delf-ret's own (regular files named ``.<name>.delfret-<random>.tmp``, as
  :func:`atomic_write` names them) untouched for ``min_age_seconds`` are
  removed, so a write in progress elsewhere and every other file are left
  alone. Returns how many were removed.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    return 0
  now, removed = time.time(), 0
  for path in folder.glob(f".*{TEMP_MARK}*.tmp"):
    with contextlib.suppress(OSError):
      info = path.lstat()
      if (
        TEMP_NAME.fullmatch(path.name)
        and stat.S_ISREG(info.st_mode)
        and now - info.st_mtime >= min_age_seconds
      ):
        path.unlink()
        removed += 1
  if removed and log is not None:
    log(f"removed {removed} temporary files left by an interrupted run in {folder}")
  return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file next to ``path``; renames it onto ``path`` on success.

  If the body raises (or the process dies), ``path`` is untouched and the
  temporary file is removed (or, after a crash, left as ``.<name>.delfret-<random>.tmp``,
  which readers ignore and :func:`remove_leftovers` removes).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 files; others may read ours.
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

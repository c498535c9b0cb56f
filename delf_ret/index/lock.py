"""The writer lock of an index folder: one writer at a time, readers never wait.

Every change to an index folder (building, adding, deleting, saving, removing a
killed save's leftovers) happens while its writer holds an exclusive
``flock`` on ``<index folder>/.delfret-writer.lock``. The operating system
drops the lock when the holder's file is closed or the process dies (kill -9
included), so a killed run never leaves a stale lock; the file itself stays
(removing a lock file while another process waits on it would break the lock).
A second writer is refused at once with a LocalIndexError naming the folder,
never left waiting. A folder the lock created and nothing else was written to
(a run that failed before saving) is removed again with its lock file; a
writer that locked a lock file removed meanwhile tries again on the new one. Readers take no lock: they read the version ``CURRENT``
names (delf_ret.index.local_index).

The lock is re-entrant within one thread of one process (a build holds it and
its saves take it again); another thread of the same process is refused like
another process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import pathlib
import threading
from typing import Iterator

from delf_ret.index.errors import IndexBusyError

LOCK_NAME = ".delfret-writer.lock"
ATTEMPTS = 5  # Tries to lock the current lock file when a finished writer removed the last one.


@dataclasses.dataclass
class _Held:
  thread: int  # The owning thread.
  fd: int  # Descriptor of the locked file.
  made_folder: bool  # The lock created the folder (removed if nothing else is written there).
  depth: int = 1


# Folder (resolved path) -> the lock this process holds on it.
_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _busy(folder: pathlib.Path) -> IndexBusyError:
  return IndexBusyError(
    f"index folder {folder} is being written by another process (lock "
    f"{LOCK_NAME} held); wait for it to finish, or use another --index_dir"
  )


def _acquire(folder: pathlib.Path) -> _Held:
  """Opens and locks the folder's lock file (the one now at its path)."""
  made_folder = not folder.exists()
  for _ in range(ATTEMPTS):
    try:
      folder.mkdir(parents=True, exist_ok=True)
      fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
      continue  # The folder was removed by a writer that made it and wrote nothing: again.
    except OSError as error:
      raise IndexBusyError(
        f"cannot open the writer lock of index folder {folder}: {error}"
      ) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked, now = os.fstat(fd), os.stat(folder / LOCK_NAME)
    except OSError as error:
      os.close(fd)
      if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _busy(folder) from None
      if error.errno == errno.ENOENT:
        continue  # Removed by the writer that just finished: lock the new one.
      raise IndexBusyError(f"cannot lock index folder {folder}: {error}") from None
    if (locked.st_dev, locked.st_ino) != (now.st_dev, now.st_ino):
      os.close(fd)
      continue
    with contextlib.suppress(OSError):  # Who holds it, for a curious user; not read by delf-ret.
      os.ftruncate(fd, 0)
      os.write(fd, f"{os.getpid()}\n".encode())
    return _Held(threading.get_ident(), fd, made_folder)
  raise _busy(folder)


def _release(folder: pathlib.Path, held: _Held) -> None:
  """Unlocks; first removes a folder the lock made if nothing but the lock file is in it."""
  try:
    with contextlib.suppress(OSError):
      if held.made_folder and os.listdir(folder) == [LOCK_NAME]:
        os.unlink(folder / LOCK_NAME)
        folder.rmdir()
  finally:
    os.close(held.fd)  # Closing the only descriptor of the locked file releases the lock.


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike) -> Iterator[None]:
  """Holds the writer lock of index folder ``folder`` (created if missing) for the block.

  Raises IndexBusyError (one line, naming the folder) at once when another
  process or thread holds it.
  """
  folder = pathlib.Path(folder)
  key = os.path.realpath(folder)
  with _held_guard:
    held = _held.get(key)
    if held is None:
      _held[key] = _acquire(folder)
    elif held.thread != threading.get_ident():
      raise _busy(folder)
    else:
      held.depth += 1
  try:
    yield
  finally:
    with _held_guard:
      held = _held[key]
      held.depth -= 1
      if not held.depth:
        del _held[key]
        _release(folder, held)

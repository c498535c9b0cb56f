"""The index package's errors (a module of their own so that every index module can raise them)."""

from __future__ import annotations

from delf_ret.errors import DelfRetError


class LocalIndexError(DelfRetError):
  """The index cannot be used as asked (wrong dimension, corrupt files, unknown image...)."""


class IndexBusyError(LocalIndexError):
  """Another process (or thread) is writing the index folder."""

"""Helpers shared by the command-line tools (flag checks, failure lists); imports no CLI module."""

from __future__ import annotations

import sys

from absl import app, flags


def require_flags(flag_values: flags.FlagValues, *names: str) -> None:
  """Raises absl's UsageError naming the first of ``names`` that is unset."""
  for name in names:
    if not getattr(flag_values, name):
      raise app.UsageError(f"--{name} is required")


def report_failures(failures: list[tuple[object, str]], what: str) -> int:
  """Prints '<n> <what> failed:' and one reason per line to stderr; returns the exit status.

  Returns 1 when there are failures, 0 otherwise.
  """
  if not failures:
    return 0
  print(f"{len(failures)} {what} failed:", file=sys.stderr)
  for _, reason in failures:
    print(f"  {reason}", file=sys.stderr)
  return 1

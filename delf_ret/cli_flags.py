"""Helpers shared by the command-line tools (flag checks); imports no CLI module."""

from __future__ import annotations

from absl import app, flags


def require_flags(flag_values: flags.FlagValues, *names: str) -> None:
  """Raises absl's UsageError naming the first of ``names`` that is unset."""
  for name in names:
    if not getattr(flag_values, name):
      raise app.UsageError(f"--{name} is required")

"""Timing helpers shared by the pipeline stages (seconds per stage, summed across calls)."""

from __future__ import annotations

import time


def add_seconds(timings: dict[str, float] | None, stage: str, start: float) -> None:
  """Adds the seconds since ``start`` (time.perf_counter) to ``timings[stage]`` (None: nothing)."""
  if timings is not None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start

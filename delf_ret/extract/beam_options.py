"""What every Apache Beam pipeline of delf-ret shares: the optional import of apache-beam, the
one-line error without it, and Beam's options from command-line words.

Used by extraction (delf_ret.extract.beam_pipeline) and index building
(delf_ret.index.beam_pipeline). Light: no TensorFlow, no extractor (indexing imports it).
apache-beam is the ``beam`` extra (``pip install 'delf-ret[beam]'``): without it this module
imports, and :func:`require_beam` raises the error its caller names.
"""

from __future__ import annotations

import logging
from typing import Sequence

from delf_ret.errors import DelfRetError

try:  # An extra: the rest of delf-ret, and this module's import, do without it.
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.options.pipeline_options import StandardOptions
except ImportError as error:
  beam = None
  _MISSING = str(error)

# The in-process runner. Beam's "DirectRunner" first tries the Prism runner, which downloads
# a binary; delf-ret runs this one instead when DirectRunner or no runner is asked for.
LOCAL_RUNNER = "FnApiRunner"
_WORKER_LOG_LEVEL = "--default_sdk_harness_log_level"


class BeamPipelineError(DelfRetError):
  """Apache Beam is not installed, or a Beam pipeline of delf-ret cannot run."""


def require_beam(doing: str, error: type[DelfRetError] = BeamPipelineError) -> None:
  """``error`` (one line: ``<doing> with Beam needs apache-beam (<why>): pip install
  'delf-ret[beam]'``) when apache-beam is missing; ``doing`` e.g. "extracting"."""
  if beam is None:
    raise error(f"{doing} with Beam needs apache-beam ({_MISSING}): pip install 'delf-ret[beam]'")


def pipeline_options(argv: Sequence[str], quiet: bool = False) -> PipelineOptions:
  """Beam's options from command-line words (e.g. ``["--direct_num_workers=2"]``); the runner
  is LOCAL_RUNNER when none or "DirectRunner" is named.

  quiet: Beam (and its workers) log warnings only, unless ``argv`` names
  ``--default_sdk_harness_log_level`` (Beam logs each bundle at INFO level: many lines for a
  pipeline of many small elements). BeamPipelineError when apache-beam is missing.
  """
  require_beam("running a pipeline")
  quiet = quiet and not any(word.startswith(_WORKER_LOG_LEVEL) for word in argv)
  options = PipelineOptions([*([f"{_WORKER_LOG_LEVEL}=WARNING"] if quiet else []), *argv])
  if quiet:
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
  standard = options.view_as(StandardOptions)
  if standard.runner is None or standard.runner.lower() in ("direct", "directrunner"):
    standard.runner = LOCAL_RUNNER
  return options

r"""Extracts DELF features of images with an Apache Beam pipeline: many workers, many machines.

Usage (the local runner, two worker processes):
  extract_features_beam --images_dir photos/ --output_dir features/ \
      --beam_pipeline_options="--direct_num_workers=2 --direct_running_mode=multi_processing"
On Dataflow (images and features on GCS; workers from a container with delf-ret[beam]):
  extract_features_beam --images_dir gs://bucket/photos --output_dir gs://bucket/features \
      --beam_pipeline_options="--runner=DataflowRunner --project=P --region=R \
      --temp_location=gs://bucket/tmp --sdk_container_image=IMAGE"

The same feature files as extract_features (docs/scaling.md): each worker builds the
extractor once and extracts with the single-machine code; OUTPUT_DIR/<image stem>.delf (and,
with use_global_features in the config, <image stem>.delg_global) is written atomically through Beam's file systems (gs://, s3:// with Beam's extras), which
--images_dir (not --recursive) and --list_images_path may name too; the model and PCA files
are local paths on every worker. Images
whose feature file exists are skipped, so a killed pipeline resumes when the same command
is run again; unreadable images are reported one line each and the exit status is 1. The
runner is Beam's in-process FnApiRunner when --beam_pipeline_options names none or
DirectRunner (Beam's DirectRunner would first try Prism, which downloads a binary). Needs
the beam extra: pip install 'delf-ret[beam]'.
"""

from __future__ import annotations

import logging
import pathlib
import shlex

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.cli.inputs import define_image_flags
from delf_ret.cli.inputs import image_paths_from_flags
from delf_ret.errors import InputError
from delf_ret.extract.beam_options import pipeline_options
from delf_ret.extract.beam_options import require_beam
from delf_ret.extract.settings import nothing_left
from delf_ret.features import feature_file_names

FLAGS = flags.FLAGS
define_config_flags()
flags.DEFINE_alias("delf_config_path", "config_path")
define_image_flags()
flags.DEFINE_string(
  "output_dir", None, "Folder for the .delf feature files (a local path, gs://..., s3://...)."
)
flags.DEFINE_alias("output_features_dir", "output_dir")
flags.DEFINE_boolean(
  "overwrite",
  False,
  "Delete and recompute feature files of --output_dir (a local folder) that were made "
  "with other settings (otherwise such a folder is refused).",
)
flags.DEFINE_string(
  "beam_pipeline_options",
  "",
  "Beam pipeline options as one string, split like a shell command line, e.g. "
  '"--runner=DataflowRunner --project=P" or "--direct_num_workers=2 '
  '--direct_running_mode=multi_processing". Default: the in-process runner, one worker.',
)
define_backend_flag()
define_progress_flag()


def _pipeline_argv() -> list[str]:
  try:
    return shlex.split(FLAGS.beam_pipeline_options)
  except ValueError as error:
    raise InputError(f"--beam_pipeline_options: {error}") from None


def _remote(path: str | None) -> bool:
  return bool(path) and "://" in str(path)


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "output_dir")
  pipeline_argv = _pipeline_argv()
  config = load_config_from_flags()
  remote_inputs = _remote(FLAGS.images_dir) or _remote(FLAGS.list_images_path)
  if remote_inputs and FLAGS.recursive:
    raise InputError("--recursive reads local folders only")
  local_paths = [] if remote_inputs else image_paths_from_flags()
  feature_file_names(local_paths)  # Two images with one id are refused before any work.
  if (
    local_paths
    and not _remote(FLAGS.output_dir)
    and not FLAGS.overwrite
    and nothing_left(FLAGS.output_dir, config, local_paths)
  ):
    print(
      f"done: nothing left to do, all {len(local_paths)} feature files are in "
      f"{FLAGS.output_dir} with the same settings"
    )
    return 0
  # Beam's notices (its optional Google Cloud clients, caches) on every start; warnings stay.
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  logging.getLogger("apache_beam.io.gcp").setLevel(logging.ERROR)
  # Lazy: Apache Beam and TensorFlow, imported once the flags are checked (--help answers
  # at once).
  from delf_ret.extract.beam_pipeline import DOING
  from delf_ret.extract.beam_pipeline import extract_with_beam
  from delf_ret.extract.beam_pipeline import remote_image_paths

  require_beam(DOING)  # Without the beam extra: one line naming it.
  image_paths: list[str] | list[pathlib.Path] = local_paths
  if remote_inputs:
    image_paths = remote_image_paths(FLAGS.images_dir, FLAGS.list_images_path)
  summary = extract_with_beam(
    config,
    image_paths,
    FLAGS.output_dir,
    pipeline_options(pipeline_argv),
    backend=FLAGS.backend,
    overwrite=FLAGS.overwrite,
    log=log,
  )
  print(
    f"summary: {summary.extracted} extracted, {summary.skipped} skipped (done before), "
    f"{len(summary.failures)} failed, of {summary.total} images"
  )
  if report_failures(summary.failures, f"of {summary.total} images"):
    return 1
  print(f"done: {summary.total} images, features in {FLAGS.output_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

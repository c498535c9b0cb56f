r"""Downloads a retrieval benchmark (Oxford5k, Paris6k, ROxford5k, RParis6k) from its official URLs.

Usage:
  download_dataset --dataset roxford5k --output_dir data/
writes data/roxford5k/jpg/*.jpg and data/roxford5k/gnd_roxford5k.pkl (original
datasets: data/oxford5k/gt/*.txt). Interrupted downloads resume when the same
command is run again. --mirror_url fetches the same file names from a mirror.
Files are checked against their SHA-256 where it is known (the Revisited
ground-truth pkls; --sha256 FILE=DIGEST adds others); a mismatching file is
deleted and the run fails. Files without a known digest have theirs printed.
"""

from __future__ import annotations

import re

from absl import flags

from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.datasets.download import DATASETS
from delf_ret.datasets.download import download_dataset
from delf_ret.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, sorted(DATASETS), "Dataset to download.")
flags.DEFINE_string("output_dir", None, "Folder that receives <dataset>/.")
flags.DEFINE_string("mirror_url", None, "Base URL of a mirror holding the same file names.")
flags.DEFINE_boolean("keep_archives", False, "Keep the downloaded archives after unpacking.")
flags.DEFINE_multi_string(
  "sha256",
  [],
  "FILE=DIGEST: expected SHA-256 of a downloaded file "
  "(e.g. oxbuild_images-v1.tgz=<64 hex digits>); repeatable.",
)


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "dataset", "output_dir")
  digests = {}
  for item in FLAGS.sha256:
    file_name, _, digest = item.partition("=")
    if not file_name or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
      raise InputError(f"--sha256 {item!r}: expected FILE=<64 hex digits>")
    digests[file_name] = digest.lower()
  dataset_dir = download_dataset(
    FLAGS.dataset, FLAGS.output_dir, FLAGS.mirror_url, FLAGS.keep_archives, log=log, sha256=digests
  )
  print(f"done: {dataset_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

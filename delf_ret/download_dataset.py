r"""Downloads a retrieval benchmark (Oxford5k, Paris6k, ROxford5k, RParis6k) from its official URLs.

Usage:
  download_dataset --dataset roxford5k --output_dir data/
writes data/roxford5k/jpg/*.jpg and data/roxford5k/gnd_roxford5k.pkl (original
datasets: data/oxford5k/gt/*.txt). Interrupted downloads resume when the same
command is run again. --mirror_url fetches the same file names from a mirror.
"""

from __future__ import annotations

import sys

from absl import app, flags

from delf_ret.cli_flags import require_flags
from delf_ret.datasets.download import DATASETS, DownloadError, download_dataset

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, sorted(DATASETS), "Dataset to download.")
flags.DEFINE_string("output_dir", None, "Folder that receives <dataset>/.")
flags.DEFINE_string("mirror_url", None, "Base URL of a mirror holding the same file names.")
flags.DEFINE_boolean("keep_archives", False, "Keep the downloaded archives after unpacking.")


def main(argv):
  del argv
  require_flags(FLAGS, "dataset", "output_dir")
  try:
    dataset_dir = download_dataset(FLAGS.dataset, FLAGS.output_dir, FLAGS.mirror_url,
                                   FLAGS.keep_archives, log=lambda line: print(line, flush=True))
  except DownloadError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(f"done: {dataset_dir}")
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()

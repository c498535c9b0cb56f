r"""Downloads a retrieval benchmark (Oxford5k, Paris6k, ROxford5k, RParis6k) from its official URLs.

Usage:
  download_dataset --dataset roxford5k --output_dir data/
writes data/roxford5k/jpg/*.jpg and data/roxford5k/gnd_roxford5k.pkl (original
datasets: data/oxford5k/gt/*.txt). Interrupted downloads resume when the same
command is run again. --mirror_url fetches the same file names from a mirror.
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import log, require_flags, run_tool
from delf_ret.datasets.download import DATASETS, download_dataset

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, sorted(DATASETS), "Dataset to download.")
flags.DEFINE_string("output_dir", None, "Folder that receives <dataset>/.")
flags.DEFINE_string("mirror_url", None, "Base URL of a mirror holding the same file names.")
flags.DEFINE_boolean("keep_archives", False, "Keep the downloaded archives after unpacking.")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "dataset", "output_dir")
  dataset_dir = download_dataset(FLAGS.dataset, FLAGS.output_dir, FLAGS.mirror_url,
                                 FLAGS.keep_archives, log=log)
  print(f"done: {dataset_dir}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

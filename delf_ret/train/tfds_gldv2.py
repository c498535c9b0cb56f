"""A tensorflow_datasets builder for a local copy of GLDv2 (clean), "gldv2_clean".

The data cannot be downloaded by the builder: put ``train_clean.csv`` and the
``train/`` image tree (published layout, see delf_ret.train.gldv2) in a folder
and pass it as the manual folder::

  import tensorflow_datasets as tfds
  from delf_ret.train.tfds_gldv2 import Gldv2Clean  # registers the builder
  builder = Gldv2Clean(data_dir="tfds_data")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="gldv2/"))
  train = builder.as_dataset(split="train")  # or tfds.load("gldv2_clean", ...)

Splits "train" and "validation" are the same seeded stratified split as the
TFRecord shards of prepare_gldv2 (20% validation, seed 0). Examples hold the
JPEG image, the image id, the original landmark id and the contiguous label.
Unreadable images are skipped with a warning. Needs the ``[tfds]`` extra
(``pip install 'delf-ret[tfds]'``); importing this module without it raises GldDataError.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
from PIL import Image

from delf_ret.train.gldv2 import GldDataError
from delf_ret.train.gldv2 import TrainImage
from delf_ret.train.gldv2 import read_train_csv
from delf_ret.train.gldv2 import stratified_split

try:
  import tensorflow_datasets as tfds
except ImportError:  # An extra: the rest of delf-ret does without it.
  raise GldDataError(
    "the gldv2_clean tfds builder needs tensorflow-datasets, which is not installed: "
    "pip install 'delf-ret[tfds]' (prepare_gldv2 writes TFRecord shards without it)"
  ) from None

VALIDATION_SHARE = 0.2
SEED = 0


def _readable(image: TrainImage) -> bool:
  try:
    with Image.open(image.path) as decoded:
      decoded.load()
    return True
  except (OSError, ValueError, Image.DecompressionBombError) as error:
    logging.warning("skipping unreadable image %s: %s", image.path, error)
    return False


class Gldv2Clean(tfds.core.GeneratorBasedBuilder):
  """Google Landmarks v2, clean training set, from a local copy."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local copy of train_clean.csv + train/ images."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Place train_clean.csv and the train/ folder (train/<a>/<b>/<c>/<id>.jpg) of the Google "
    "Landmarks Dataset v2 in the manual folder."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(encoding_format="jpeg"),
          "image_id": tfds.features.Text(),
          "landmark_id": tfds.features.Scalar(dtype=np.int64),
          "label": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/cvdfoundation/google-landmark",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    images = read_train_csv(root / "train_clean.csv", root / "train")
    train, validation = stratified_split(images, VALIDATION_SHARE, SEED)
    return {
      "train": self._generate_examples(train),
      "validation": self._generate_examples(validation),
    }

  def _generate_examples(self, images: list[TrainImage]):
    for image in images:
      if _readable(image):
        yield (
          image.image_id,
          {
            "image": str(image.path),
            "image_id": image.image_id,
            "landmark_id": image.landmark_id,
            "label": image.label,
          },
        )

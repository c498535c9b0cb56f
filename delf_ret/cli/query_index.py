r"""Queries the index with one image: top database images, RANSAC-verified.

Usage:
  query_index --config_path my.pbtxt --index_dir index/ --features_dir features/ \
      --image photo.jpg [--box x1,y1,x2,y2] [--num_results 10] \
      [--output_json top.json] [--contact_sheet top.png --database_images_dir photos/]

Prints rank, image id, first-stage vote score, RANSAC inliers and whether the pair is
verified (at least retrieval_config.min_inliers inliers) of the top
results. --contact_sheet draws the query and the top results (their images are
looked up by id in --database_images_dir).
"""

from __future__ import annotations

import json
import math

import numpy as np
from absl import flags

from delf_ret.atomic import atomic_write
from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.errors import InputError
from delf_ret.features import feature_loader
from delf_ret.features import image_id_of
from delf_ret.images import ImageReadError
from delf_ret.images import crop_to_box
from delf_ret.images import list_images
from delf_ret.images import load_image
from delf_ret.retrieval.ranking import is_verified
from delf_ret.retrieval.ranking import load_index
from delf_ret.retrieval.ranking import retrieve

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_string("image", None, "Query image.")
flags.DEFINE_list("box", [], "Query box x1,y1,x2,y2 in pixels (default: whole image).")
flags.DEFINE_string("index_dir", None, "Index of the database images (build_index).")
flags.DEFINE_string("features_dir", None, "Feature files of the database images.")
flags.DEFINE_integer(
  "num_results", 10, "How many top results to print and write (a positive number).", lower_bound=1
)
flags.DEFINE_string("output_json", None, "JSON file for the top results.")
flags.DEFINE_string("contact_sheet", None, "PNG file: the query and the top results.")
flags.DEFINE_string("database_images_dir", None, "Database images, for --contact_sheet.")
define_backend_flag()


def _box(values: list[str]) -> tuple[float, float, float, float] | None:
  """--box as (x1, y1, x2, y2) pixels, or None; InputError unless it is 4 finite numbers."""
  if not values:
    return None
  try:
    if len(values) != 4:
      raise ValueError
    x1, y1, x2, y2 = (float(v) for v in values)
  except ValueError:
    raise InputError(f"--box needs 4 numbers x1,y1,x2,y2, got {','.join(values)}") from None
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
    raise InputError(f"--box needs 4 finite numbers x1,y1,x2,y2 (pixels), got {','.join(values)}")
  return x1, y1, x2, y2


def _contact_sheet(path: str, query_image: np.ndarray, top: list) -> None:
  from delf_ret.evaluation.visualize import draw_contact_sheet  # Lazy: matplotlib.

  by_id = {image_id_of(p): p for p in list_images(FLAGS.database_images_dir)}
  images, captions = [], []
  for rank, entry in enumerate(top, 1):
    if entry.image_id not in by_id:
      raise ImageReadError(f"no image named {entry.image_id} in {FLAGS.database_images_dir}")
    images.append(load_image(by_id[entry.image_id]))
    inliers = "-" if entry.inliers is None else entry.inliers
    captions.append(f"{rank}. {entry.image_id}\nscore {entry.score:.1f}, inliers {inliers}")
  draw_contact_sheet(path, query_image, images, captions, query_caption="query")


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "image", "index_dir", "features_dir")
  if FLAGS.contact_sheet:
    require_flags(FLAGS, "database_images_dir")
  box = _box(FLAGS.box)
  # Lazy: TensorFlow, imported once the flags are checked (--help answers at once).
  from delf_ret.extract.extractor import DelfExtractor

  config = load_config_from_flags()
  index = load_index(FLAGS.index_dir, config.retrieval_config)
  image = load_image(FLAGS.image)
  if box is not None:
    image = crop_to_box(image, box)
  features = DelfExtractor(config, backend=FLAGS.backend).extract(image)
  result = retrieve(features, index, feature_loader(FLAGS.features_dir), config.retrieval_config)
  top = result.reranked[: FLAGS.num_results]
  print(
    f"{FLAGS.image}: {features.num_features} features; top {len(top)} of "
    f"{len(index)} indexed images"
  )
  retrieval = config.retrieval_config
  print(f"{'rank':>4}  {'image':<40} {'score':>8} {'inliers':>7}  verified")
  for rank, entry in enumerate(top, 1):
    inliers = "-" if entry.inliers is None else entry.inliers
    verified = "-" if entry.inliers is None else "yes" if is_verified(entry, retrieval) else "no"
    print(f"{rank:>4}  {entry.image_id:<40} {entry.score:>8.2f} {inliers:>7}  {verified}")
  print(f"verified: at least {retrieval.min_inliers} RANSAC inliers (retrieval_config.min_inliers)")
  if FLAGS.output_json:
    with atomic_write(FLAGS.output_json, "w") as handle:
      json.dump(
        {
          "query": FLAGS.image,
          "num_features": features.num_features,
          "results": [
            {
              "rank": r,
              "image_id": e.image_id,
              "score": e.score,
              "inliers": e.inliers,
              "verified": is_verified(e, retrieval),
            }
            for r, e in enumerate(top, 1)
          ],
        },
        handle,
        indent=2,
      )
  if FLAGS.contact_sheet:
    _contact_sheet(FLAGS.contact_sheet, image, top)
  for path in (FLAGS.output_json, FLAGS.contact_sheet):
    if path:
      print(f"wrote {path}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

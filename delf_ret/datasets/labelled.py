"""Small retrieval benchmarks in the published layouts from a labelled image list.

Input: a CSV with columns ``image,landmark`` (image paths relative to the CSV;
an empty landmark marks a distractor), like ``../shared/data/labels.csv``.
Every image of a landmark is a query; the other images of its landmark are its
positives ("easy", or "hard" for the images named in ``hard_images``);
everything else is negative. The query's own image is junk (ignored), as it
is in the database too. Query boxes cover the whole image.

Written under ``output_dir``:
  jpg/<name>.jpg       links to the images (names are the image file stems);
  gnd_<name>.pkl       Revisited layout (easy / hard / junk);
  gt/<landmark>_<n>_{query,good,ok,junk}.txt  original layout (good = easy,
                       ok = hard, junk = the query itself).
"""

from __future__ import annotations

import collections
import csv
import os
import pathlib
import pickle
import shutil

from PIL import Image

from delf_ret.evaluation.ground_truth import GroundTruthError


def read_labels(csv_path: str | os.PathLike) -> list[tuple[pathlib.Path, str]]:
  """(image path, landmark or "") rows of a labels CSV; paths relative to the CSV's folder."""
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise GroundTruthError(f"labels file not found: {csv_path}")
  with open(csv_path, newline="") as handle:
    reader = csv.DictReader(handle)
    if not reader.fieldnames or not {"image", "landmark"} <= set(reader.fieldnames):
      raise GroundTruthError(f"{csv_path}: expected the columns image,landmark")
    rows = [(csv_path.parent / row["image"], (row["landmark"] or "").strip()) for row in reader]
  if not rows:
    raise GroundTruthError(f"{csv_path} lists no images")
  missing = [str(path) for path, _ in rows if not path.is_file()]
  if missing:
    raise GroundTruthError(f"{csv_path}: {len(missing)} listed images missing, e.g. {missing[0]}")
  return rows


def _link(source: pathlib.Path, target: pathlib.Path) -> None:
  if target.exists() or target.is_symlink():
    target.unlink()
  try:
    target.symlink_to(source.resolve())
  except OSError:
    shutil.copyfile(source, target)


def write_labelled_benchmark(
  csv_path: str | os.PathLike,
  output_dir: str | os.PathLike,
  name: str = "mini_landmarks",
  hard_images: frozenset[str] = frozenset(),
) -> dict[str, pathlib.Path]:
  """Writes both ground-truth layouts (see the module docstring); returns their paths.

  hard_images: image names (file stems) that are hard positives for the other
  queries of their landmark.
  """
  rows = read_labels(csv_path)
  output_dir = pathlib.Path(output_dir)
  jpg_dir, gt_dir = output_dir / "jpg", output_dir / "gt"
  jpg_dir.mkdir(parents=True, exist_ok=True)
  gt_dir.mkdir(parents=True, exist_ok=True)
  names = [path.stem for path, _ in rows]
  duplicates = [n for n, c in collections.Counter(names).items() if c > 1]
  if duplicates:
    raise GroundTruthError(f"two images named {duplicates[0]!r}: names must be unique")
  for path, image_name in zip((p for p, _ in rows), names):
    _link(path, jpg_dir / f"{image_name}.jpg")
  imlist = sorted(names)
  index = {image_name: i for i, image_name in enumerate(imlist)}
  landmark_of = {path.stem: landmark for path, landmark in rows}
  by_landmark = collections.defaultdict(list)
  for image_name in imlist:
    if landmark_of[image_name]:
      by_landmark[landmark_of[image_name]].append(image_name)
  qimlist, gnd = [], []
  for old in gt_dir.glob("*.txt"):
    old.unlink()
  for landmark in sorted(by_landmark):
    for n, query in enumerate(by_landmark[landmark], 1):
      others = [o for o in by_landmark[landmark] if o != query]
      easy = [o for o in others if o not in hard_images]
      hard = [o for o in others if o in hard_images]
      with Image.open(jpg_dir / f"{query}.jpg") as image:
        width, height = image.size
      qimlist.append(query)
      gnd.append(
        {
          "bbx": [0.0, 0.0, float(width), float(height)],
          "easy": [index[o] for o in easy],
          "hard": [index[o] for o in hard],
          "junk": [index[query]],
        }
      )
      prefix = gt_dir / f"{landmark}_{n}"
      pathlib.Path(f"{prefix}_query.txt").write_text(f"{query} 0 0 {width} {height}\n")
      for kind, members in (("good", easy), ("ok", hard), ("junk", [query])):
        pathlib.Path(f"{prefix}_{kind}.txt").write_text("".join(f"{m}\n" for m in members))
  if not qimlist:
    raise GroundTruthError(f"{csv_path} names no landmark: nothing to query")
  gnd_path = output_dir / f"gnd_{name}.pkl"
  with open(gnd_path, "wb") as handle:
    pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
  return {"images_dir": jpg_dir, "gt_dir": gt_dir, "gnd_path": gnd_path}

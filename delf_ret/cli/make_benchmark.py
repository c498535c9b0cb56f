r"""Makes a retrieval benchmark (Revisited layout) from labelled photos, for perform_retrieval.

Usage:
  make_benchmark --labels_csv labels.csv --images_dir photos/ --output_dir my_bench/ \
      [--name my_bench] [--overwrite]
  build_index --dataset_gnd_path my_bench/gnd_my_bench.pkl --images_dir my_bench/jpg \
      --features_dir features/ --index_dir index/
  perform_retrieval --dataset_gnd_path my_bench/gnd_my_bench.pkl --images_dir my_bench/jpg \
      --index_dir index/ --features_dir features/ --output_dir results/

--labels_csv has one image,label row per photo (a header row is allowed): the image
is a file name (or id) of --images_dir, and an empty label marks a distractor.
Every photo of a label is a query whose positives are the other photos of that
label ("easy"); everything else is negative, and the query's own photo is junk.
Photos of the folder that the file does not list are left out. Written under
--output_dir: gnd_<name>.pkl (the Revisited ground truth: imlist, qimlist, gnd
with easy/hard/junk and full-image query boxes), jpg/<id>.jpg (links to the
photos) and gt/ (the original Oxford5k layout). A row naming no photo of the folder,
a malformed row or an unusable label is refused with its row; the benchmark is
written into a temporary folder and moved into place only when complete.
"""

from __future__ import annotations

import csv
import os
import pathlib
import shutil
import tempfile

from absl import flags

from delf_ret.cli.common import log
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.datasets.labelled import write_labelled_benchmark
from delf_ret.errors import InputError
from delf_ret.features import image_id_of
from delf_ret.images import list_images
from delf_ret.index.labels import LabelsFileError
from delf_ret.index.labels import read_image_labels

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "labels_csv", None, "CSV of image,label rows (an empty label: a distractor photo)."
)
flags.DEFINE_string("images_dir", None, "Folder of the photos the labels file names.")
flags.DEFINE_string("output_dir", None, "Folder of the benchmark (created).")
flags.DEFINE_string(
  "name", None, "Dataset name (gnd_<name>.pkl). Default: the name of --output_dir."
)
flags.DEFINE_boolean(
  "overwrite",
  False,
  "Replace a benchmark already in --output_dir (a non-empty folder is refused otherwise).",
)

# Characters a label may not hold: it names files of the gt/ folder.
_UNSAFE = set('/\\:*?"<>|')


def labelled_photos(labels_csv: str, images_dir: str) -> list[tuple[pathlib.Path, str]]:
  """(photo, label or "") of each row; LabelsFileError naming the row when it is unusable."""
  labels = read_image_labels(labels_csv)
  photos: dict[str, pathlib.Path] = {}
  for path in list_images(images_dir):
    photos.setdefault(image_id_of(path), path)
  rows = []
  for image_id, label in labels.labels.items():
    where = f"{labels.path}: row {labels.rows[image_id]}"
    if image_id not in photos:
      raise LabelsFileError(f"{where} names image {image_id!r}, not found in {images_dir}")
    if label and (set(label) & _UNSAFE or label.startswith(".") or not label.isprintable()):
      raise LabelsFileError(
        f'{where}: label {label!r} cannot name files (no / \\ : * ? " < > |, no leading dot, '
        f"printable characters only)"
      )
    rows.append((photos[image_id], label))
  if not any(label for _, label in rows):
    raise LabelsFileError(f"{labels.path} gives no photo a label: nothing to query")
  return rows


def check_output(output: pathlib.Path, overwrite: bool, images_dir: str, labels_csv: str) -> None:
  """InputError unless ``output`` may receive the benchmark: it must not hold the photos or the
  labels file (replacing it deletes its old contents, and the benchmark only links to the
  photos), and a non-empty one is replaced only with ``overwrite`` and only when it is a
  benchmark written before (a folder with a gnd_*.pkl file)."""
  target = output.resolve()
  for flag, given in (("--images_dir", images_dir), ("--labels_csv", labels_csv)):
    inside = pathlib.Path(given).resolve()
    if inside == target or target in inside.parents:
      raise InputError(
        f"--output_dir {output} holds {flag} {given}: the benchmark replaces the folder's "
        "contents (and only links to the photos); choose a folder of its own"
      )
  if not output.exists() or (output.is_dir() and not any(output.iterdir())):
    return
  if not overwrite:
    raise InputError(f"{output} exists and is not empty; give --overwrite to replace it")
  if not output.is_dir() or not any(output.glob("gnd_*.pkl")):
    raise InputError(
      f"{output} is not a benchmark (no gnd_*.pkl in it): --overwrite replaces only a benchmark "
      "written before; choose an empty or new folder"
    )


def _replace(target: pathlib.Path, built: pathlib.Path) -> None:
  """Moves ``built`` to ``target``; an old ``target`` is moved aside first, then deleted."""
  if target.exists():
    aside = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.replace(target, aside / target.name)
    os.replace(built, target)
    shutil.rmtree(aside)
  else:
    os.replace(built, target)


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "labels_csv", "images_dir", "output_dir")
  output = pathlib.Path(FLAGS.output_dir)
  check_output(output, FLAGS.overwrite, FLAGS.images_dir, FLAGS.labels_csv)
  name = FLAGS.name or output.resolve().name
  rows = labelled_photos(FLAGS.labels_csv, FLAGS.images_dir)
  output.resolve().parent.mkdir(parents=True, exist_ok=True)
  work = pathlib.Path(tempfile.mkdtemp(dir=output.resolve().parent, prefix=f".{output.name}.new-"))
  try:
    labels_file = work / "labels.csv"
    with open(labels_file, "w", newline="") as handle:
      writer = csv.writer(handle)
      writer.writerow(["image", "landmark"])
      writer.writerows([str(path.resolve()), label] for path, label in rows)
    paths = write_labelled_benchmark(labels_file, work / "benchmark", name=name)
    labels_file.unlink()
    _replace(output, work / "benchmark")
  finally:
    shutil.rmtree(work, ignore_errors=True)
  queries = sum(bool(label) for _, label in rows)
  labels = len({label for _, label in rows if label})
  log(
    f"{name}: {len(rows)} photos, {queries} queries of {labels} labels, "
    f"{len(rows) - queries} distractors"
  )
  print(f"wrote {output / paths['gnd_path'].name}, {output / 'jpg'} and {output / 'gt'}")
  return 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

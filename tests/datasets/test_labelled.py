"""Mini benchmark layouts written from a labels CSV of real photos."""

import pytest

from delf_ret.datasets.labelled import write_labelled_benchmark
from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import read_original_gt
from delf_ret.evaluation.ground_truth import read_revisited_gnd

HARD = "piazza_san_marco_15148634_5228701572"


def test_both_layouts_from_shared_labels(shared_data, tmp_path):
  paths = write_labelled_benchmark(shared_data / "labels.csv", tmp_path, hard_images={HARD})
  revisited = read_revisited_gnd(paths["gnd_path"], paths["images_dir"])
  original = read_original_gt(paths["gt_dir"], paths["images_dir"])
  assert len(revisited.imlist) == 32 and len(revisited.qimlist) == 17
  assert original.imlist == revisited.imlist
  assert sorted(original.qimlist) == sorted(revisited.qimlist)
  name = revisited.imlist.index
  query = revisited.qimlist.index("piazza_san_marco_18627786_5929294590")
  entry = revisited.gnd[query]
  assert list(entry["junk"]) == [name("piazza_san_marco_18627786_5929294590")]
  assert list(entry["hard"]) == [name(HARD)]
  assert len(entry["easy"]) == 3  # The other San Marco photos.
  # Boxes cover the whole image.
  from PIL import Image

  with Image.open(revisited.image_path(revisited.qimlist[query])) as image:
    assert list(entry["bbx"]) == [0, 0, *image.size]
  # Original layout: good = easy, ok = hard.
  oq = original.qimlist.index("piazza_san_marco_18627786_5929294590")
  assert sorted(original.gnd[oq]["good"]) == sorted(entry["easy"])
  assert list(original.gnd[oq]["ok"]) == [name(HARD)]
  # Distractors are in the database but never queries.
  assert "baboon" in revisited.imlist and "baboon" not in revisited.qimlist


def test_bad_labels(tmp_path, shared_data):
  with pytest.raises(GroundTruthError, match="not found"):
    write_labelled_benchmark(tmp_path / "none.csv", tmp_path / "out")
  (tmp_path / "cols.csv").write_text("path,label\na.jpg,x\n")
  with pytest.raises(GroundTruthError, match="image,landmark"):
    write_labelled_benchmark(tmp_path / "cols.csv", tmp_path / "out")
  (tmp_path / "missing.csv").write_text("image,landmark\nnope.jpg,x\n")
  with pytest.raises(GroundTruthError, match="missing"):
    write_labelled_benchmark(tmp_path / "missing.csv", tmp_path / "out")
  photo = shared_data / "distractors" / "baboon.jpg"
  (tmp_path / "nolandmark.csv").write_text(f"image,landmark\n{photo},\n")
  with pytest.raises(GroundTruthError, match="no landmark"):
    write_labelled_benchmark(tmp_path / "nolandmark.csv", tmp_path / "out")

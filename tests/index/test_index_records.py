"""Image records of an index (path and label): round trip, old indexes, tampering, building."""

import json
import os
import pathlib

import numpy as np
import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import make_features
from conftest import random_unit_descriptors
from conftest import run_command
from conftest import tool_env
from delf_ret.config import DelfRetrievalConfig
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index.builder import build_index
from delf_ret.index.labels import LabelsFileError
from delf_ret.index.labels import read_image_labels
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.local_index import read_image_records
from delf_ret.retrieval.indexing import check_labels_known
from delf_ret.retrieval.indexing import index_database
from delf_ret.retrieval.indexing import missing_feature_files

DIM = 8


def small_index(params=IndexParams()):
  rng = np.random.default_rng(0)
  index = LocalFeatureIndex(DIM, params)
  index.add("a", random_unit_descriptors(rng, 5, DIM), path="/photos/a.jpg", label="tower")
  index.add("b", random_unit_descriptors(rng, 5, DIM), path="/photos/b.jpg")
  index.add("c", random_unit_descriptors(rng, 5, DIM))
  return index


def meta_path(folder: pathlib.Path) -> pathlib.Path:
  return folder / (folder / "CURRENT").read_text().strip() / "meta.json"


def edit_meta(folder: pathlib.Path, change) -> None:
  path = meta_path(folder)
  meta = json.loads(path.read_text())
  change(meta)
  path.write_text(json.dumps(meta))


def test_records_round_trip_and_follow_add_delete_compact(tmp_path):
  index = small_index(IndexParams(index_type="hnsw"))
  assert (index.image_path("a"), index.image_label("a")) == ("/photos/a.jpg", "tower")
  assert (index.image_path("b"), index.image_label("b")) == ("/photos/b.jpg", None)
  assert (index.image_path("c"), index.image_label("c")) == (None, None)
  index.set_image_record("b", label="bridge")  # The path stays.
  index.set_image_record("a", label="")  # Cleared.
  index.save(tmp_path / "idx")
  loaded = LocalFeatureIndex.load(tmp_path / "idx")
  assert [(loaded.image_path(n), loaded.image_label(n)) for n in "abc"] == [
    ("/photos/a.jpg", None),
    ("/photos/b.jpg", "bridge"),
    (None, None),
  ]
  loaded.delete("b")
  loaded.compact()  # HNSW: rebuilt without b; the other records stay.
  loaded.add("b", np.ones((2, DIM), np.float32))  # Re-added without a record.
  assert (loaded.image_path("b"), loaded.image_label("b")) == (None, None)
  assert loaded.image_path("a") == "/photos/a.jpg"
  with pytest.raises(LocalIndexError, match="'zz' is not in the index"):
    loaded.image_label("zz")


def test_records_read_from_the_metadata_alone(tmp_path):
  small_index().save(tmp_path / "idx")
  expected = {
    "a": ImageRecord("/photos/a.jpg", "tower"),
    "b": ImageRecord("/photos/b.jpg", None),
    "c": ImageRecord(),
  }
  assert read_image_records(tmp_path / "idx") == expected
  # The descriptors are not read: a damaged index.faiss does not matter to the records.
  meta_path(tmp_path / "idx").with_name("index.faiss").write_bytes(b"damaged")
  assert read_image_records(tmp_path / "idx") == expected
  with pytest.raises(LocalIndexError, match="corrupt"):
    LocalFeatureIndex.load(tmp_path / "idx")
  edit_meta(tmp_path / "idx", lambda meta: meta.update(records=[]))
  with pytest.raises(LocalIndexError, match="metadata in .* is damaged"):
    read_image_records(tmp_path / "idx")
  with pytest.raises(LocalIndexError, match="no index in"):
    read_image_records(tmp_path / "nowhere")


def test_paths_are_made_absolute_and_bad_values_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  index = small_index()
  index.set_image_record("c", path=pathlib.Path("photos/c.jpg"))
  assert index.image_path("c") == str(tmp_path / "photos" / "c.jpg")
  for record in ({"label": "two\nlines"}, {"label": "x" * 2000}, {"path": "/a\0b"}):
    with pytest.raises(LocalIndexError, match="cannot record image 'c'"):
      index.set_image_record("c", **record)
  with pytest.raises(LocalIndexError, match="cannot record image 'd'"):
    index.add("d", np.ones((1, DIM), np.float32), label="a\rb")
  assert "d" not in index and index.image_path("c") == str(tmp_path / "photos" / "c.jpg")


def test_an_index_saved_without_records_still_loads(tmp_path):
  small_index().save(tmp_path / "idx")
  meta = json.loads(meta_path(tmp_path / "idx").read_text())
  assert meta["records"] == {
    "a": {"path": "/photos/a.jpg", "label": "tower"},
    "b": {"path": "/photos/b.jpg", "label": None},
  }
  # Exactly the meta.json of an index saved before records existed: no "records" key.
  edit_meta(tmp_path / "idx", lambda meta: meta.pop("records"))
  old = LocalFeatureIndex.load(tmp_path / "idx")
  assert len(old) == 3 and old.image_path("a") is None and old.image_label("a") is None
  old.set_image_record("a", label="tower")  # An old index gains records when saved again.
  old.save(tmp_path / "idx")
  assert LocalFeatureIndex.load(tmp_path / "idx").image_label("a") == "tower"


@pytest.mark.parametrize(
  "records, reason",
  [
    ([], "not an object"),
    ({"zz": {"path": None, "label": "x"}}, "not indexed"),
    ({"a": {"path": "photos/a.jpg", "label": None}}, "not absolute"),
    ({"a": {"path": None, "label": 7}}, "not text"),
    ({"a": {"path": None, "label": ""}}, "1 to 1024 characters"),
    ({"a": {"path": None, "label": "x" * 1025}}, "1 to 1024 characters"),
    ({"a": {"label": "x"}}, "is not {path, label}"),
    ({"a": {"path": None, "label": "x", "extra": 1}}, "is not {path, label}"),
    ({"a": ["/photos/a.jpg", "x"]}, "is not {path, label}"),
  ],
)
def test_tampered_records_are_refused(tmp_path, records, reason):
  small_index().save(tmp_path / "idx")
  edit_meta(tmp_path / "idx", lambda meta: meta.update(records=records))
  with pytest.raises(LocalIndexError, match="metadata in .* is damaged") as error:
    LocalFeatureIndex.load(tmp_path / "idx")
  assert reason in str(error.value)


def test_a_record_listed_twice_is_refused(tmp_path):
  small_index().save(tmp_path / "idx")
  path = meta_path(tmp_path / "idx")
  text = path.read_text().replace('"records": {', '"records": {"c": {"path": null, "label": "x"}, ')
  path.write_text(text.replace('"b": {"path"', '"c": {"path"'))
  with pytest.raises(LocalIndexError, match="given twice"):
    LocalFeatureIndex.load(tmp_path / "idx")


def test_labels_file_header_optional_and_malformed_rows(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_text("photos/a.jpg, tower\n\nb.png,\nc,bridge\n")
  labels = read_image_labels(path)
  assert labels.labels == {"a": "tower", "b": "", "c": "bridge"}
  assert labels.rows == {"a": 1, "b": 3, "c": 4}
  path.write_text("Image,landmark\na.jpg,tower\n")
  assert read_image_labels(path).labels == {"a": "tower"}
  for text, message in [
    ("image,label\na.jpg,x\nb.jpg\n", "row 3 has 1 fields, expected 2"),
    ("a.jpg,x,y\n", "row 1 has 3 fields"),
    ("a.jpg,x\n,y\n", "row 2 names no image"),
    ("a.jpg,x\nsub/a.png,y\n", "row 2 lists image 'a' again \\(first on row 1\\)"),
    ('a.jpg,"x\n', "row 1 is not CSV"),
    ("image,label\n", "lists no image"),
    ("a.jpg,x\x00y\n", "row 1: image 'a': label"),
  ]:
    path.write_text(text)
    with pytest.raises(LabelsFileError, match=f"{path}: .*{message}|{path} {message}"):
      read_image_labels(path)
  path.write_bytes(b"a.jpg,\xff\n")
  with pytest.raises(LabelsFileError, match="not a UTF-8 text file"):
    read_image_labels(path)


def write_feature_files(folder: pathlib.Path, names) -> list[pathlib.Path]:
  rng = np.random.default_rng(1)
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    write_features(
      folder / f"{name}.delf", make_features(np.zeros((4, 2)), random_unit_descriptors(rng, 4, DIM))
    )
  return sorted(folder.glob("*.delf"))


def test_builder_records_paths_and_labels_and_relabels(tmp_path):
  paths = write_feature_files(tmp_path / "features", ["a", "b", "c"])
  labels = tmp_path / "labels.csv"
  labels.write_text("a.jpg,tower\nb.jpg,\n")
  quiet = {"log": lambda line: None}
  index_dir = tmp_path / "idx"
  indexed = index_database(
    index_dir, tmp_path / "features", IndexParams(), labels=read_image_labels(labels), **quiet
  )
  assert [indexed.index.image_label(n) for n in "abc"] == ["tower", None, None]
  assert indexed.index.image_path("a") is None  # Feature files only: no image path.
  # Adding to the index with another labels file and the image files relabels and records.
  labels.write_text("image,label\na.jpg,\nc.jpg,bridge\n")
  images = {name: tmp_path / "photos" / f"{name}.jpg" for name in "abc"}
  index, failures = build_index(
    paths, index_dir, IndexParams(), image_paths=images, labels=read_image_labels(labels).labels
  )
  assert not failures
  loaded = LocalFeatureIndex.load(index_dir)
  assert [loaded.image_label(n) for n in "abc"] == [None, None, "bridge"]
  assert loaded.image_path("b") == str(tmp_path / "photos" / "b.jpg")
  # A row naming an image that is neither indexed nor to be indexed: refused before any work.
  labels.write_text("a.jpg,x\nzz.jpg,y\n")
  with pytest.raises(LabelsFileError, match=f"{labels}: row 2 names image 'zz', which is"):
    index_database(
      index_dir, tmp_path / "features", IndexParams(), labels=read_image_labels(labels), **quiet
    )
  assert LocalFeatureIndex.load(index_dir).image_label("a") is None
  # The same check for build_index to make before the model loads: against the stage built.
  with pytest.raises(LabelsFileError, match=f"{labels}: row 2 names image 'zz', which is"):
    check_labels_known(index_dir, DelfRetrievalConfig(), read_image_labels(labels), ["b"])
  check_labels_known(index_dir, DelfRetrievalConfig(), read_image_labels(labels), ["zz"])
  # What extraction would write (build_index's count): the images without their files.
  images = [tmp_path / "photos" / f"{name}.jpg" for name in "abcd"]
  assert missing_feature_files(images, tmp_path / "features") == 1
  assert missing_feature_files(images, tmp_path / "features", with_global=True) == 4


@pytest.mark.slow
def test_build_index_tool_records_the_bundled_photos_and_labels(tmp_path):
  demo_labels = read_image_labels(BUNDLED_IMAGES / "labels.csv")
  common = [  # The shipped default model, on small images to keep the test short.
    "--config_override=image_scales=0.5,1.0",
    "--config_override=max_image_size=256",
    f"--features_dir={tmp_path / 'features'}",
    f"--index_dir={tmp_path / 'index'}",
  ]
  tool = installed_script("build_index")
  result = run_command(
    [
      tool,
      *common,
      f"--images_dir={BUNDLED_IMAGES}",
      f"--labels_csv={BUNDLED_IMAGES / 'labels.csv'}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr
  index = LocalFeatureIndex.load(tmp_path / "index")
  assert sorted(index.image_ids()) == sorted(demo_labels.labels)
  for image_id, label in demo_labels.labels.items():
    assert index.image_label(image_id) == (label or None)
    path = index.image_path(image_id)
    assert path is not None and os.path.isabs(path) and pathlib.Path(path).is_file()
    assert pathlib.Path(path).samefile(BUNDLED_IMAGES / f"{image_id}.jpg")
  assert index.image_label("sacre_coeur_1") == "sacre_coeur"
  # Relabelling from the feature files alone: labels change, recorded paths stay.
  relabel = tmp_path / "relabel.csv"
  relabel.write_text("sacre_coeur_1.jpg,basilica\nriver_1.jpg,\n")
  result = run_command([tool, *common, f"--labels_csv={relabel}"], timeout=300, env=tool_env())
  assert result.returncode == 0, result.stderr
  assert "updated the path or label of 2 images" in result.stdout
  index = LocalFeatureIndex.load(tmp_path / "index")
  assert index.image_label("sacre_coeur_1") == "basilica" and index.image_label("river_1") is None
  assert index.image_label("sacre_coeur_2") == "sacre_coeur"
  assert pathlib.Path(index.image_path("river_1") or "").samefile(BUNDLED_IMAGES / "river_1.jpg")
  # A labels row naming an image not in the index: one line naming the file and the row.
  relabel.write_text("image,label\nriver_1.jpg,river\nnot_a_photo.jpg,x\n")
  result = run_command([tool, *common, f"--labels_csv={relabel}"], timeout=300, env=tool_env())
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: {relabel}: row 3 names image 'not_a_photo', which is neither indexed nor among "
    "the images to index"
  )
  # With images to index as well: refused the same way, before the model loads and extracts.
  result = run_command(
    [tool, *common, f"--images_dir={BUNDLED_IMAGES}", f"--labels_csv={relabel}"],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 2 and "extracting" not in result.stdout, result.stdout
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {relabel}: row 3 names")

"""query_index, recognize and the page's service over ASMK and global indexes, and the image
records (paths, labels) every first stage keeps.

The shipped default model at a small image size on six bundled photos: one ASMK index
built from the images (extracted once, each path and label recorded) and one global index
built from the same feature files with the labels (no paths: none given). Queries are
other photos of indexed places, so the right first result is known.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret.index.labels import LabelsFileError
from delf_ret.index.labels import read_image_labels
from delf_ret.index.records import RECORDS_FILE
from delf_ret.index.records import read_records

GALLERY = {
  "campus_building_1": "campus_building",
  "graffiti_1": "graffiti_wall",
  "graffiti_3": "graffiti_wall",
  "roofs_1": "roofs",
  "leuven_a": "leuven_street",
  "opencv_home": "",
}
# Every test uses the module's indexes, built through the console scripts (about 30 s).
pytestmark = pytest.mark.slow
OVERRIDES = [
  "max_image_size=256",
  "image_scales=0.7071,1.0",
  "use_global_features=true",
  "delf_global_config.use_pca=false",
  # The default line (29, chosen on full-size training photos) is beyond these 256 px photos.
  "retrieval_config.min_inliers=20",
]


def _flags(stage: str) -> list[str]:
  return [f"--config_override={o}" for o in [*OVERRIDES, f"retrieval_config.first_stage={stage}"]]


def _config(stage: str):
  from delf_ret.config import load_config
  from delf_ret.default_model import default_config_path

  return load_config(default_config_path(), [*OVERRIDES, f"retrieval_config.first_stage={stage}"])


def _tool(name: str, *args: str):
  return run_command([installed_script(name), *args], timeout=600, env=tool_env())


def _errors(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
  root = tmp_path_factory.mktemp("stage_tools")
  (root / "photos").mkdir()
  for name in GALLERY:
    (root / "photos" / f"{name}.jpg").symlink_to(BUNDLED_IMAGES / f"{name}.jpg")
  (root / "gallery.csv").write_text(
    "image,label\n" + "".join(f"{n}.jpg,{label}\n" for n, label in GALLERY.items())
  )
  common = [f"--labels_csv={root / 'gallery.csv'}", f"--features_dir={root / 'features'}"]
  built = _tool(
    "build_index",
    *common,
    f"--images_dir={root / 'photos'}",
    f"--index_dir={root / 'asmk'}",
    *_flags("asmk"),
  )
  assert built.returncode == 0, built.stderr
  built = _tool("build_index", *common, f"--index_dir={root / 'global'}", *_flags("global"))
  assert built.returncode == 0, built.stderr
  return root


def test_query_index_many_queries_with_an_asmk_index(indexes, tmp_path):
  queries = [BUNDLED_IMAGES / f"{name}.jpg" for name in ("campus_building_2", "roofs_2")]
  (tmp_path / "queries.txt").write_text("".join(f"{path}\n" for path in queries))
  result = _tool(
    "query_index",
    f"--index_dir={indexes / 'asmk'}",
    f"--features_dir={indexes / 'features'}",
    f"--list_images_path={tmp_path / 'queries.txt'}",
    f"--output_json={tmp_path / 'top.json'}",
    f"--output_csv={tmp_path / 'top.csv'}",
    "--num_results=2",
    *_flags("asmk"),
  )
  assert result.returncode == 0, result.stderr
  answers = json.loads((tmp_path / "top.json").read_text())["queries"]
  firsts = [(a["results"][0]["image_id"], a["results"][0]["label"]) for a in answers]
  assert firsts == [("campus_building_1", "campus_building"), ("roofs_1", "roofs")]
  assert answers[0]["results"][0]["verified"]  # 281 inliers; roofs_2 has fewer than 22.
  rows = (tmp_path / "top.csv").read_text().splitlines()
  assert rows[0] == "query,rank,image_id,score,inliers,verified,label" and len(rows) == 5
  assert not (tmp_path / "top.json.partial").exists()


def test_recognize_with_a_global_index(indexes, tmp_path):
  queries = [BUNDLED_IMAGES / f"{name}.jpg" for name in ("campus_building_2", "opencv_messi5")]
  (tmp_path / "queries.txt").write_text("".join(f"{path}\n" for path in queries))
  result = _tool(
    "recognize",
    f"--index_dir={indexes / 'global'}",
    f"--features_dir={indexes / 'features'}",
    f"--list_images_path={tmp_path / 'queries.txt'}",
    f"--output_json={tmp_path / 'answers.json'}",
    *_flags("global"),
  )
  assert result.returncode == 0, result.stderr
  answers = json.loads((tmp_path / "answers.json").read_text())["queries"]
  assert [a["label"] for a in answers] == ["campus_building", None]  # None: "unknown".
  assert answers[0]["neighbours"][0][:1] == ["campus_building_1"]


def test_a_config_of_another_stage_is_refused_in_one_line(indexes):
  photo = f"--image={BUNDLED_IMAGES / 'graffiti_3.jpg'}"
  for tool, folder, asked in (("query_index", "global", "asmk"), ("recognize", "asmk", "votes")):
    result = _tool(
      tool,
      f"--index_dir={indexes / folder}",
      f"--features_dir={indexes / 'features'}",
      photo,
      *_flags(asked),
    )
    assert result.returncode == 2, result.stderr
    lines = _errors(result)
    assert len(lines) == 1 and f"'{folder}'" in lines[0] and f"'{asked}'" in lines[0], lines
    assert "Traceback" not in result.stderr


def test_records_of_asmk_and_global_indexes(indexes, tmp_path):
  from delf_ret.retrieval.first_stage import open_first_stage
  from delf_ret.retrieval.first_stage import remove_from_first_stage
  from delf_ret.retrieval.indexing import index_first_stage

  asmk = open_first_stage(indexes / "asmk", _config("asmk").retrieval_config)
  assert asmk.image_path("roofs_1") == str(indexes / "photos" / "roofs_1.jpg")
  assert [asmk.image_label(n) for n in GALLERY] == [label or None for label in GALLERY.values()]
  glob = open_first_stage(indexes / "global", _config("global").retrieval_config)
  assert glob.image_label("graffiti_3") == "graffiti_wall"
  assert glob.image_path("graffiti_3") is None  # Built from feature files: no path.
  # Relabelling an index (feature files only) keeps the paths; an unknown image is refused.
  shutil.copytree(indexes / "asmk", tmp_path / "asmk")
  (tmp_path / "new.csv").write_text("roofs_1.jpg,rooftops\nopencv_home.jpg,home\n")
  quiet = {"feature_paths": [], "log": lambda line: None}
  config = _config("asmk")
  labels = read_image_labels(tmp_path / "new.csv")
  stage = index_first_stage(tmp_path / "asmk", indexes / "features", config, labels=labels, **quiet)
  again = open_first_stage(tmp_path / "asmk", config.retrieval_config)
  for opened in (stage.stage, again):
    assert (opened.image_label("roofs_1"), opened.image_label("opencv_home")) == (
      "rooftops",
      "home",
    )
    assert opened.image_path("roofs_1") == str(indexes / "photos" / "roofs_1.jpg")
  (tmp_path / "bad.csv").write_text("roofs_1.jpg,x\nnowhere.jpg,y\n")
  with pytest.raises(LabelsFileError, match="bad.csv: row 2 names image 'nowhere'"):
    index_first_stage(
      tmp_path / "asmk",
      indexes / "features",
      config,
      labels=read_image_labels(tmp_path / "bad.csv"),
      **quiet,
    )
  # Removing an image drops its record; an index without the records file opens without them.
  remove_from_first_stage(tmp_path / "asmk", ["roofs_1"], config.retrieval_config, log=print)
  assert "roofs_1" not in read_records(tmp_path / "asmk")
  (tmp_path / "asmk" / RECORDS_FILE).unlink()
  old = open_first_stage(tmp_path / "asmk", config.retrieval_config)
  assert len(old) == 5 and old.image_label("graffiti_1") is None


@pytest.mark.parametrize("stage", ["asmk", "global"])
def test_the_page_service_queries_and_changes_a_gallery_of_any_stage(indexes, tmp_path, stage):
  """Queries by indexed photo need no extraction; the photo added stands for an upload whose
  extraction gave the features the shipped model wrote for roofs_1 at build time (read back,
  .delf and .delg_global), so the service runs without loading the model."""
  from delf_ret.features import global_file_name
  from delf_ret.features import read_features
  from delf_ret.features import read_global_descriptor
  from delf_ret.images import load_image
  from delf_ret.retrieval.first_stage import open_first_stage
  from delf_ret.serve.service import SearchService

  shutil.copytree(indexes / stage, tmp_path / "index")
  shutil.copytree(indexes / "features", tmp_path / "features")
  config = _config(stage)
  saved = (
    read_features(tmp_path / "features" / "roofs_1.delf"),
    read_global_descriptor(tmp_path / "features" / global_file_name("roofs_1")),
  )
  # What the stage's query extractor gives: local features, and for global the descriptor.
  extract = (lambda image: saved) if stage == "global" else (lambda image: saved[0])
  service = SearchService(
    config, tmp_path / "index", tmp_path / "features", extract, [BUNDLED_IMAGES], print
  )
  answer = service.query(database_id="graffiti_1")
  assert answer.ranked[0].image_id == "graffiti_3" and answer.recognition.label == "graffiti_wall"
  assert service.image_file("graffiti_1") is not None  # Its record, or the image folder.
  photo = (BUNDLED_IMAGES / "roofs_2.jpg").read_bytes()
  added = service.add_photo(photo, load_image(BUNDLED_IMAGES / "roofs_2.jpg"), "mine.jpg", "roofs")
  reopened = open_first_stage(tmp_path / "index", config.retrieval_config)
  assert added in reopened and reopened.image_label(added) == "roofs"
  assert service.image_file(added) == service.gallery_dir.resolve() / "mine.jpg"
  assert service.query(database_id="roofs_1").ranked[0].image_id == added
  service.remove_photo(added)
  assert added not in open_first_stage(tmp_path / "index", config.retrieval_config)
  assert not (tmp_path / "features" / f"{added}.delf").exists()

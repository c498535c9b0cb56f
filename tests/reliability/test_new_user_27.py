"""Issue 27, a new user: the demo on other data, official DELG command lines, optional extras."""

import dataclasses
import json
import pathlib
import pickle

import numpy as np
import pytest

from conftest import FAST_DEMO
from conftest import copy_demo_folder
from conftest import demo_environment
from conftest import installed_script
from conftest import make_features
from conftest import random_unit_descriptors
from conftest import run_command

# A few rows of the shared labels.csv: two landmarks (one of them the match pair's) and two
# distractors, in the layout the demo reads from ../shared/data.
SHARED_ROWS = [
  "landmarks/campus_building_DSC_0410.jpg,campus_building",
  "landmarks/campus_building_DSC_0411.jpg,campus_building",
  "landmarks/sacre_coeur_lightglue1.jpg,sacre_coeur",
  "landmarks/sacre_coeur_lightglue2.jpg,sacre_coeur",
  "distractors/apple.jpg,",
  "distractors/baboon.jpg,",
]


def _shared_beside(root: pathlib.Path, shared_data: pathlib.Path) -> None:
  """root/shared/data: SHARED_ROWS of the real shared photos, as a clone's ../shared/data."""
  data = root / "shared" / "data"
  data.mkdir(parents=True)
  for folder in ("landmarks", "distractors", "pairs"):
    (data / folder).symlink_to(shared_data / folder)
  rows = [row for row in SHARED_ROWS if (shared_data / row.split(",")[0]).is_file()]
  assert len(rows) == len(SHARED_ROWS), "the shared photos of this test are missing"
  (data / "labels.csv").write_text("image,landmark\n" + "\n".join(rows) + "\n")


@pytest.mark.slow  # Runs the delf_demo console script twice.
def test_demo_second_run_on_other_data_starts_clean(bundled_demo_run, tmp_path, shared_data):
  # The first run (FAST_DEMO, no ../shared/data) is shared with tests/cli/test_demo.py; this
  # test goes on in a copy of its folder.
  ran_in, first = bundled_demo_run
  assert first.returncode == 0, first.stderr[-3000:]
  clone = copy_demo_folder(ran_in, tmp_path / "clone")
  demo = [installed_script("delf_demo"), *FAST_DEMO]
  assert "data: bundled demo photos" in first.stdout
  output = clone / "demo_output"
  (output / "notes.txt").write_text("the user's own file\n")

  _shared_beside(tmp_path, shared_data)
  second = run_command(demo, timeout=900, env=demo_environment(), cwd=clone)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "data: shared landmarks and distractors" in second.stdout
  clean = [line for line in second.stdout.splitlines() if "starting clean" in line]
  assert len(clean) == 1 and "bundled demo photos" in clean[0], second.stdout[-3000:]
  assert "features: 6 photos extracted, 0 reused" in second.stdout
  names = {path.stem for path in (output / "features").glob("*.delf")}
  assert names == {pathlib.Path(row.split(",")[0]).stem for row in SHARED_ROWS}
  assert not (output / "matches_graffiti_1_3.png").exists()
  for name in ("top_results.png", "matches_graf1_graf3.png", "matches_campus_building.png"):
    assert (output / name).is_file(), name
  assert (output / "notes.txt").read_text() == "the user's own file\n"
  record = json.loads((output / "demo_data.json").read_text())
  assert record["data"] == "shared landmarks and distractors"


def _revisited_dataset(root: pathlib.Path, shared_data: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """A small Revisited dataset of real photos: gnd_mini.pkl and jpg/<name>.jpg. One query,
  campus_building_DSC_0410, whose box is the left half of the photo; five database images."""
  from PIL import Image

  images = root / "jpg"
  images.mkdir(parents=True)
  rows = [row.split(",")[0] for row in SHARED_ROWS]
  for row in rows:
    (images / pathlib.Path(row).name).symlink_to(shared_data / row)
  query = "campus_building_DSC_0410"
  with Image.open(images / f"{query}.jpg") as photo:
    width, height = photo.size
  imlist = sorted(pathlib.Path(row).stem for row in rows if pathlib.Path(row).stem != query)
  box = [0.0, 0.0, width / 2, float(height)]
  gnd = {
    "imlist": imlist,
    "qimlist": [query],
    "gnd": [{"bbx": box, "easy": [imlist.index("campus_building_DSC_0411")], "hard": []}],
  }
  path = root / "gnd_mini.pkl"
  with open(path, "wb") as handle:
    pickle.dump(gnd, handle)
  return path, {"query": query, "box": box, "imlist": imlist}


@pytest.mark.slow  # Runs extract_features twice and perform_retrieval, the official way.
def test_official_delg_command_lines_extract_cropped_queries_and_retrieve(tmp_path, shared_data):
  from delf_ret.default_model import default_config_path
  from delf_ret.features import read_features

  gnd_path, facts = _revisited_dataset(tmp_path / "data", shared_data)
  features = tmp_path / "features"
  env = demo_environment()
  for image_set in ("query", "index"):
    extracted = run_command(
      [
        installed_script("extract_features"),
        f"--delf_config_path={default_config_path()}",
        "--config_override=max_image_size=320",
        f"--dataset_file_path={gnd_path}",
        f"--images_dir={tmp_path / 'data' / 'jpg'}",
        f"--image_set={image_set}",
        f"--output_features_dir={features / image_set}",
      ],
      timeout=600,
      env=env,
      cwd=tmp_path,
    )
    assert extracted.returncode == 0, extracted.stderr[-3000:]
  assert {path.stem for path in (features / "index").glob("*.delf")} == set(facts["imlist"])
  (query_file,) = (features / "query").glob("*.delf")
  assert query_file.stem == facts["query"]
  # Cropped to the left half: every point (y, x pixels of the crop) inside it, not across
  # the whole photo.
  query = read_features(query_file)
  assert query.num_features > 0 and query.locations[:, 1].max() <= facts["box"][2]

  results = tmp_path / "results"
  retrieval = run_command(
    [
      installed_script("perform_retrieval"),
      f"--dataset_file_path={gnd_path}",
      f"--query_features_dir={features / 'query'}",
      f"--index_features_dir={features / 'index'}",
      "--use_geometric_verification",
      f"--output_dir={results}",
    ],
    timeout=600,
    env=env,
    cwd=tmp_path,
  )
  assert retrieval.returncode == 0, retrieval.stderr[-3000:]
  assert (results / "index").is_dir() and (results / "mAP.txt").is_file()
  lists = json.loads((results / "ranked_lists.json").read_text())
  assert "campus_building_DSC_0411" in json.dumps(lists)
  # The query's features are the file given, not extracted again.
  cached = results / "query_features" / query_file.name
  assert cached.read_bytes() == query_file.read_bytes()


def _requirements(tmp_path: pathlib.Path) -> dict[str, set[str]]:
  """{extra ("" for the default install): distribution names} from setup.py's metadata."""
  import re
  import sys

  from conftest import REPO

  made = run_command(
    [sys.executable, "setup.py", "-q", "egg_info", f"--egg-base={tmp_path}"],
    timeout=300,
    cwd=REPO,
  )
  assert made.returncode == 0, made.stderr[-3000:]
  requirements: dict[str, set[str]] = {"": set()}
  section = ""
  for line in (tmp_path / "delf_ret.egg-info" / "requires.txt").read_text().splitlines():
    if line.startswith("["):
      section = line.strip("[]")
      requirements[section] = set()
    elif line.strip():
      requirements[section].add(re.split(r"[<>=!~; ]", line, maxsplit=1)[0].lower())
  return requirements


@pytest.mark.slow  # Runs setup.py in a subprocess.
def test_optional_parts_are_extras_and_the_test_extra_pulls_them(tmp_path):
  requirements = _requirements(tmp_path)
  optional = {"tensorflow-datasets", "importlib-resources", "scikit-image", "scikit-learn"}
  default = {name.replace("_", "-") for name in requirements[""]}
  assert not default & optional, default & optional
  assert {"tensorflow-datasets", "importlib_resources"} <= requirements["tfds"]
  assert requirements["skimage"] == {"scikit-image"}
  assert requirements["tfds"] | requirements["skimage"] <= requirements["test"]


def _without(monkeypatch, *modules: str) -> None:
  """Imports of ``modules`` fail, as in an install without the extra that brings them."""
  import sys

  for name in [loaded for loaded in list(sys.modules) if loaded.split(".")[0] in modules]:
    monkeypatch.delitem(sys.modules, name)
  for name in modules:
    monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_extra_is_one_error_line_naming_the_pip_command(monkeypatch):
  import importlib
  import sys

  from delf_ret.errors import DelfRetError
  from delf_ret.match import RansacParams
  from delf_ret.match import verify_pair
  from delf_ret.train.photos import skimage_photos

  _without(monkeypatch, "skimage", "tensorflow_datasets")
  rng = np.random.default_rng(0)
  features = make_features(rng.uniform(0, 100, (20, 2)), random_unit_descriptors(rng, 20, 40))
  params = dataclasses.replace(RansacParams(), backend="skimage")
  with pytest.raises(DelfRetError, match=r"pip install 'delf-ret\[skimage\]'"):
    verify_pair(features, features, params)
  with pytest.raises(DelfRetError, match=r"pip install 'delf-ret\[skimage\]'"):
    skimage_photos(64)
  monkeypatch.delitem(sys.modules, "delf_ret.train.tfds_gldv2", raising=False)
  with pytest.raises(DelfRetError, match=r"pip install 'delf-ret\[tfds\]'") as raised:
    importlib.import_module("delf_ret.train.tfds_gldv2")
  assert "\n" not in str(raised.value)


def test_pca_is_learned_without_scikit_learn(monkeypatch, shared_data):
  from PIL import Image

  from delf_ret.extract.pca import learn_pca

  # Real data: the 8 x 8 grey patches of a real photo, 64-d.
  with Image.open(shared_data / "pairs" / "graf1.png") as photo:
    grey = np.asarray(photo.convert("L").resize((200, 160)), np.float32) / 255
  patches = grey.reshape(20, 8, 25, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
  _without(monkeypatch, "sklearn")
  model = learn_pca(patches)
  assert model.projection.shape == (64, 64)
  np.testing.assert_allclose(model.projection @ model.projection.T, np.eye(64), atol=1e-5)
  projected = (patches - model.mean) @ model.projection.T
  np.testing.assert_allclose(projected.var(axis=0, ddof=1), model.variances, rtol=1e-3, atol=1e-7)
  assert np.all(np.diff(model.variances) <= 1e-7)
  largest = np.abs(model.projection).argmax(axis=1)
  assert np.all(model.projection[np.arange(64), largest] > 0)


def test_pca_equals_scikit_learns_where_it_is_installed(shared_data):
  decomposition = pytest.importorskip("sklearn.decomposition")
  from PIL import Image

  from delf_ret.extract.pca import learn_pca

  with Image.open(shared_data / "pairs" / "graf1.png") as photo:
    grey = np.asarray(photo.convert("L").resize((200, 160)), np.float64) / 255
  patches = grey.reshape(20, 8, 25, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
  model = learn_pca(patches)
  reference = decomposition.PCA(n_components=64, svd_solver="full").fit(patches)
  np.testing.assert_allclose(model.projection, reference.components_, atol=1e-4)
  np.testing.assert_allclose(model.variances, reference.explained_variance_, rtol=1e-4)

"""End-to-end: build_index, perform_retrieval and query_index on the mini-landmarks fixture.

The fixture is written by the tests from ../shared/data/labels.csv (real photos
of 6 landmarks and 15 distractors) in both ground-truth layouts. The model has
random weights, so only the pipeline is checked here, not retrieval quality.
"""

import json

import pytest

from conftest import installed_script
from conftest import run_cli
from conftest import run_command
from conftest import tool_env
from delf_ret.index import LocalFeatureIndex

pytestmark = pytest.mark.slow  # Every test runs the tools as subprocesses.

# Reranking settings kept small so that the suite stays fast.
RETRIEVAL = """
retrieval_config {
  rerank_top_n: 5
  ransac_max_trials: 100
  eval_ks: [1, 5]
}
"""
QUERY_IMAGE = "sacre_coeur_lightglue1"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data, config_path):
  from delf_ret.datasets.labelled import write_labelled_benchmark

  root = tmp_path_factory.mktemp("retrieval")
  config = root / "retrieval.pbtxt"
  config.write_text(config_path.read_text() + RETRIEVAL)
  paths = write_labelled_benchmark(
    shared_data / "labels.csv", root / "mini", hard_images={"piazza_san_marco_15148634_5228701572"}
  )
  result = run_cli(
    "delf_ret.cli.build_index",
    f"--config_path={config}",
    f"--images_dir={paths['images_dir']}",
    f"--features_dir={root / 'features'}",
    f"--index_dir={root / 'index'}",
    "--save_every=10",
  )
  assert result.returncode == 0, result.stderr
  return {"root": root, "config": config, **paths}


def retrieval_args(ws, output, *dataset_args):
  return (
    f"--config_path={ws['config']}",
    f"--images_dir={ws['images_dir']}",
    f"--index_dir={ws['root'] / 'index'}",
    f"--features_dir={ws['root'] / 'features'}",
    f"--output_dir={output}",
    *dataset_args,
  )


def test_help_of_each_tool():
  for module, flag in (
    ("delf_ret.cli.build_index", "--remove_images"),
    ("delf_ret.cli.perform_retrieval", "--dataset_gnd_path"),
    ("delf_ret.cli.query_index", "--contact_sheet"),
  ):
    assert flag in run_cli(module, "--help").stdout


def test_build_index_indexes_every_image_and_resumes(workspace, model_path, tmp_path):
  index = LocalFeatureIndex.load(workspace["root"] / "index")
  assert len(index) == 32 and index.dim == 40
  # The same model file under a name Keras cannot load: the extraction settings are the same
  # (they hash the file's content), so a rerun with nothing to extract must not load it.
  unloadable = tmp_path / "delf_random.bin"
  unloadable.symlink_to(model_path)
  build_index = [
    installed_script("build_index"),
    f"--config_path={workspace['config']}",
    f"--config_override=model_path={unloadable}",
    f"--images_dir={workspace['images_dir']}",
  ]
  result = run_command(
    [
      *build_index,
      f"--features_dir={workspace['root'] / 'features'}",
      f"--index_dir={workspace['root'] / 'index'}",
    ],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr
  assert "32 images (0 added now)" in result.stdout
  assert "the model is not loaded" in result.stdout
  again = LocalFeatureIndex.load(workspace["root"] / "index")
  assert again.image_ids() == index.image_ids() and again.num_descriptors == index.num_descriptors
  # With images to extract, the model loads, and this one fails in one line.
  result = run_command(
    [*build_index, f"--features_dir={tmp_path / 'features'}", f"--index_dir={tmp_path / 'i'}"],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 2, result.stderr
  (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert error.startswith(f"error: {unloadable}: not a readable DELF model")
  assert result.stderr.strip().splitlines()[-1] == error


def test_perform_retrieval_revisited_writes_report_and_resumes(workspace):
  output = workspace["root"] / "revisited"
  args = retrieval_args(workspace, output, f"--dataset_gnd_path={workspace['gnd_path']}")
  result = run_cli("delf_ret.cli.perform_retrieval", *args)
  assert result.returncode == 0, result.stderr
  lines = (output / "mAP.txt").read_text().splitlines()
  for stage in ("[first_stage]", "[reranked]"):
    block = lines[lines.index(stage) + 1 : lines.index(stage) + 4]
    assert [line.split()[0] for line in block] == ["easy", "medium", "hard"]
    assert all(line.split()[1] == "mAP" for line in block)
  metrics = json.loads((output / "metrics.json").read_text())
  assert metrics["num_queries"] == 17
  easy = metrics["stages"]["reranked"]["easy"]
  assert easy["num_queries"] == 17 and 0 <= easy["mAP"] <= 100
  assert set(easy["mP@k"]) == {"1", "5"}
  assert metrics["stages"]["first_stage"]["hard"]["num_queries"] == 4
  ranked = json.loads((output / "ranked_lists.json").read_text())["queries"]
  assert len(ranked) == 17
  verified = [entry for entry in ranked[QUERY_IMAGE]["reranked"] if entry[2] is not None]
  assert len(verified) == 5
  for split in ("easy", "medium", "hard"):
    assert (output / f"pr_{split}.png").is_file()
  # Splits reranked separately (each skipping its own junk), seconds per stage reported.
  assert set(ranked[QUERY_IMAGE]["reranked_by_split"]) == {"easy", "medium", "hard"}
  assert ranked[QUERY_IMAGE]["reranked_by_split"]["medium"] == ranked[QUERY_IMAGE]["reranked"]
  seconds = metrics["seconds_per_query"]
  assert set(seconds) == {"extraction", "search", "loading", "matching", "ransac", "total"}
  assert seconds["extraction"] > 0 and seconds["total"] >= seconds["matching"] > 0
  assert "seconds per query: extraction" in result.stdout
  # A rerun reuses the cached queries and writes the same report.
  again = run_cli("delf_ret.cli.perform_retrieval", *args)
  assert again.returncode == 0, again.stderr
  assert "/17]" not in again.stdout
  assert json.loads((output / "metrics.json").read_text()) == metrics
  # Other retrieval settings: the cached lists are recomputed, not reported again.
  other = run_cli(
    "delf_ret.cli.perform_retrieval", *args, "--config_override=retrieval_config.rerank_top_n=3"
  )
  assert other.returncode == 0, other.stderr
  assert "[17/17]" in other.stdout
  ranked = json.loads((output / "ranked_lists.json").read_text())["queries"]
  assert len([e for e in ranked[QUERY_IMAGE]["reranked"] if e[2] is not None]) == 3


def test_perform_retrieval_original_protocol(workspace):
  output = workspace["root"] / "original"
  result = run_cli(
    "delf_ret.cli.perform_retrieval",
    *retrieval_args(workspace, output, f"--dataset_gt_dir={workspace['gt_dir']}"),
  )
  assert result.returncode == 0, result.stderr
  assert "original protocol" in (output / "mAP.txt").read_text()
  assert (
    json.loads((output / "metrics.json").read_text())["stages"]["reranked"]["original"][
      "num_queries"
    ]
    == 17
  )


def test_perform_retrieval_bad_inputs(workspace, tmp_path):
  no_dataset = run_cli("delf_ret.cli.perform_retrieval", *retrieval_args(workspace, tmp_path / "o"))
  assert no_dataset.returncode == 2 and "exactly one of" in no_dataset.stderr
  (tmp_path / "index").mkdir()
  args = list(
    retrieval_args(workspace, tmp_path / "o", f"--dataset_gnd_path={workspace['gnd_path']}")
  )
  args[2] = f"--index_dir={tmp_path / 'index'}"
  no_index = run_cli("delf_ret.cli.perform_retrieval", *args)
  assert no_index.returncode == 2 and "no index in" in no_index.stderr
  # A missing model or PCA file is one error line, not a traceback.
  for field in ("model_path", "delf_local_config.pca_parameters.mean_path"):
    args = retrieval_args(
      workspace,
      tmp_path / field,
      f"--dataset_gnd_path={workspace['gnd_path']}",
      f"--config_override={field}={tmp_path / 'missing'}",
    )
    missing = run_cli("delf_ret.cli.perform_retrieval", *args)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"{tmp_path / 'missing'}" in missing.stderr and "not found" in missing.stderr


def query_index(ws, index_dir, *flags):
  """query_index with the query image against ``index_dir``, for its 4 best results."""
  return run_cli(
    "delf_ret.cli.query_index",
    f"--config_path={ws['config']}",
    f"--index_dir={index_dir}",
    f"--features_dir={ws['root'] / 'features'}",
    f"--image={ws['images_dir'] / (QUERY_IMAGE + '.jpg')}",
    "--num_results=4",
    *flags,
  )


def test_query_then_remove_image(workspace, tmp_path):
  index = workspace["root"] / "index"
  result = query_index(
    workspace,
    index,
    f"--output_json={tmp_path / 'top.json'}",
    f"--contact_sheet={tmp_path / 'top.png'}",
    f"--database_images_dir={workspace['images_dir']}",
  )
  assert result.returncode == 0, result.stderr
  top = json.loads((tmp_path / "top.json").read_text())["results"]
  assert len(top) == 4
  # The database copy of the query image matches every feature in place.
  assert top[0]["image_id"] == QUERY_IMAGE and top[0]["inliers"] > 10
  # Verified: at least the config's min_inliers, in the JSON and the printed table.
  from delf_ret.config import load_config

  min_inliers = load_config(workspace["config"]).retrieval_config.min_inliers
  assert top[0]["verified"] == (top[0]["inliers"] >= min_inliers)
  assert [e["verified"] for e in top] == [e["inliers"] >= min_inliers for e in top]
  assert f"verified: at least {min_inliers} RANSAC inliers" in result.stdout
  assert (tmp_path / "top.png").read_bytes()[:4] == b"\x89PNG"
  # Remove it (in a copy of the index) and query again: it never comes back.
  import shutil

  index_copy = tmp_path / "index"
  shutil.copytree(index, index_copy)
  removed = run_cli(
    "delf_ret.cli.build_index",
    f"--config_path={workspace['config']}",
    f"--index_dir={index_copy}",
    f"--remove_images={QUERY_IMAGE}",
  )
  assert removed.returncode == 0, removed.stderr
  result = query_index(workspace, index_copy, f"--output_json={tmp_path / 'after.json'}")
  assert result.returncode == 0, result.stderr
  after = json.loads((tmp_path / "after.json").read_text())["results"]
  assert QUERY_IMAGE not in [entry["image_id"] for entry in after]


def test_build_index_from_a_dataset_indexes_exactly_its_database_list(tmp_path):
  """Revisited layout: the query image has a feature file too but is not in imlist."""
  import pickle

  import numpy as np

  from conftest import make_features
  from conftest import random_unit_descriptors
  from delf_ret.features import write_features

  rng = np.random.default_rng(0)
  features_dir = tmp_path / "features"
  for name in ("db_a", "db_b", "db_c", "query_q"):
    write_features(
      features_dir / f"{name}.delf",
      make_features(rng.uniform(0, 200, (30, 2)), random_unit_descriptors(rng, 30, 40)),
    )
  gnd = {
    "imlist": ["db_a", "db_b", "db_c"],
    "qimlist": ["query_q"],
    "gnd": [{"bbx": [0, 0, 10, 10], "easy": [0], "hard": [], "junk": []}],
  }
  (tmp_path / "gnd_toy.pkl").write_bytes(pickle.dumps(gnd))
  script = installed_script("build_index")
  result = run_command(
    [
      script,
      f"--dataset_gnd_path={tmp_path / 'gnd_toy.pkl'}",
      f"--features_dir={features_dir}",
      f"--index_dir={tmp_path / 'index'}",
    ],
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert "indexing its 3 database images" in result.stdout
  index = LocalFeatureIndex.load(tmp_path / "index")
  assert sorted(index.image_ids()) == ["db_a", "db_b", "db_c"]
  # The folder-wide build indexes the query image too, and the dataset build then warns.
  result = run_command(
    [script, f"--features_dir={features_dir}", f"--index_dir={tmp_path / 'all'}"],
    timeout=300,
  )
  assert result.returncode == 0 and len(LocalFeatureIndex.load(tmp_path / "all")) == 4
  result = run_command(
    [
      script,
      f"--dataset_gnd_path={tmp_path / 'gnd_toy.pkl'}",
      f"--features_dir={features_dir}",
      f"--index_dir={tmp_path / 'all'}",
    ],
    timeout=300,
  )
  assert result.returncode == 0 and "outside toy's database list (e.g. query_q)" in result.stdout

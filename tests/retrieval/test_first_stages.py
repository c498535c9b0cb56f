"""The three first stages (retrieval_config.first_stage: votes, asmk, global) end to end.

One extraction of the bundled demo photos (20 real photos, 256 px, the random-weight test
model; .delf and .delg_global files) feeds an index of each stage, built and queried through
the installed console scripts; the stages' files, refusals and the global whitening are
checked in-process. Retrieval quality is not checked (random weights): the lists, the
reranking and the metrics are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret.config import parse_config_text
from delf_ret.evaluation.ground_truth import read_revisited_gnd
from delf_ret.extract.global_features import apply_whitening
from delf_ret.extract.global_features import learn_pca_whitening
from delf_ret.features import global_file_name
from delf_ret.features import read_features
from delf_ret.features import write_global_descriptor
from delf_ret.index.asmk import AsmkIndex
from delf_ret.retrieval.dataset_runner import _result_from_json
from delf_ret.retrieval.dataset_runner import evaluate_results
from delf_ret.retrieval.dataset_runner import split_junk_names
from delf_ret.retrieval.first_stage import WHITENING_FILE
from delf_ret.retrieval.first_stage import AsmkStage
from delf_ret.retrieval.first_stage import FirstStageError
from delf_ret.retrieval.first_stage import GlobalStage
from delf_ret.retrieval.first_stage import build_first_stage
from delf_ret.retrieval.first_stage import built_stage
from delf_ret.retrieval.first_stage import configured_stage
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import read_whitening
from delf_ret.retrieval.indexing import index_first_stage
from delf_ret.retrieval.ranking import load_index

RERANK_TOP_N = 4
EXTRA = f"""
use_global_features: true
delf_global_config {{ use_pca: false }}
retrieval_config {{
  rerank_top_n: {RERANK_TOP_N}
  ransac_max_trials: 100
  eval_ks: [1, 5]
}}
"""
STAGES = ("votes", "asmk", "global")


def _stage_override(stage: str) -> str:
  return f"--config_override=retrieval_config.first_stage={stage}"


def _tool(name: str, *args: str, timeout: float = 600):
  return run_command([installed_script(name), *args], timeout=timeout, env=tool_env())


def _errors(result) -> list[str]:
  """The error lines a tool printed (its logs and TensorFlow's aside)."""
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, config_path):
  """The bundled photos as a Revisited benchmark, extracted once (build_index of the votes
  stage from the images), then indexed for asmk and global from the feature files."""
  from delf_ret.datasets.labelled import write_labelled_benchmark

  root = tmp_path_factory.mktemp("first_stages")
  config = root / "config.pbtxt"
  config.write_text(config_path.read_text() + EXTRA)
  paths = write_labelled_benchmark(BUNDLED_IMAGES / "labels.csv", root / "bench", name="demo")
  common = [
    f"--config_path={config}",
    f"--dataset_gnd_path={paths['gnd_path']}",
    f"--features_dir={root / 'features'}",
  ]
  built = {}
  for stage in STAGES:
    images = [f"--images_dir={paths['images_dir']}"] if stage == "votes" else []
    built[stage] = _tool(
      "build_index", *common, *images, f"--index_dir={root / stage}", _stage_override(stage)
    )
  return {"root": root, "config": config, "built": built, **paths}


@pytest.fixture(scope="module")
def runs(bench):
  """perform_retrieval with each first stage: votes and asmk read the query features from the
  feature folder (the queries are whole database photos); global extracts its queries."""
  root, results = bench["root"], {}
  for stage in STAGES:
    queries = [] if stage == "global" else [f"--query_features_dir={root / 'features'}"]
    results[stage] = _tool(
      "perform_retrieval",
      f"--config_path={bench['config']}",
      f"--dataset_gnd_path={bench['gnd_path']}",
      f"--images_dir={bench['images_dir']}",
      f"--index_dir={root / stage}",
      f"--features_dir={root / 'features'}",
      f"--output_dir={root / ('out_' + stage)}",
      _stage_override(stage),
      *queries,
    )
  return results


@pytest.mark.slow
def test_build_index_builds_each_stage_in_its_folder(bench):
  root = bench["root"]
  for stage in STAGES:
    assert bench["built"][stage].returncode == 0, bench["built"][stage].stderr
    assert built_stage(root / stage) == stage
  assert (root / "asmk" / "asmk" / "CURRENT").is_file()
  assert not (root / "asmk" / "CURRENT").exists()  # No votes index for another stage.
  assert (root / "global" / "global" / WHITENING_FILE).is_file()
  features = sorted((root / "features").glob("*.delf"))
  assert len(features) == 20
  assert all((root / "features" / global_file_name(p.stem)).is_file() for p in features)
  # 20 photos of 1024-d GeM descriptors: too few to learn a whitening (the rule).
  assert read_whitening(root / "global" / "global") is None


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_perform_retrieval_ranks_with_each_stage_and_reranks(bench, runs, stage):
  result = runs[stage]
  assert result.returncode == 0, result.stderr
  output = bench["root"] / f"out_{stage}"
  dataset = read_revisited_gnd(bench["gnd_path"], bench["images_dir"])
  lists = json.loads((output / "ranked_lists.json").read_text())["queries"]
  results = [_result_from_json(lists[name]) for name in dataset.qimlist]
  # The metrics are those of the shared metrics code on the written lists.
  metrics = json.loads((output / "metrics.json").read_text())["stages"]
  recomputed = evaluate_results(dataset, results, (1, 5), log=lambda line: None)
  for name, splits in recomputed.items():
    for split, values in splits.items():
      if values.mean_ap != values.mean_ap:  # A split without queries: NaN, written as null.
        assert metrics[name][split]["mAP"] is None
      else:
        assert metrics[name][split]["mAP"] == pytest.approx(100 * values.mean_ap, abs=0.006)
  assert metrics["reranked"]["medium"]["mAP"] is not None
  skipped = split_junk_names(dataset)
  assert skipped is not None
  for number, entry in enumerate(results):
    scores = [e.score for e in entry.ranked]
    assert scores == sorted(scores, reverse=True)
    assert set(entry.reranked_by_split) == {"easy", "medium", "hard"}
    for split, reranked in entry.reranked_by_split.items():
      verified = [e for e in reranked if e.inliers is not None]
      # Reranking verified the top of the first-stage list, less the split's ignored images.
      skip = skipped[number][split]
      top = [e.image_id for e in entry.ranked if e.image_id not in skip][:RERANK_TOP_N]
      assert {e.image_id for e in verified} == set(top)
      passed = [e.inliers for e in reranked if e.inliers]
      assert passed == sorted(passed, reverse=True)
      assert [e.inliers for e in reranked[: len(passed)]] == passed
  ranked = [e for r in results for e in r.ranked]
  if stage == "global":  # Every image by cosine similarity.
    assert all(len(r.ranked) == len(dataset.imlist) for r in results)
    assert all(-1.0001 <= e.score <= 1.0001 for e in ranked)
  elif stage == "asmk":  # Normalised selective-kernel similarities.
    assert all(0 < e.score <= 1.0001 for e in ranked)
  else:  # Vote totals: up to neighbours per descriptor times features.
    assert max(e.score for e in ranked) > 1.5


@pytest.mark.slow
def test_stages_rank_differently(runs, bench):
  firsts = {}
  for stage in STAGES:
    assert runs[stage].returncode == 0, runs[stage].stderr
    lists = json.loads((bench["root"] / f"out_{stage}" / "ranked_lists.json").read_text())
    firsts[stage] = {q: v["ranked"] for q, v in lists["queries"].items()}
  assert firsts["votes"] != firsts["asmk"] != firsts["global"] != firsts["votes"]


@pytest.mark.slow
def test_asmk_add_and_delete_keep_the_stage_in_step(bench, tmp_path):
  root = bench["root"]
  config = parse_config_text(bench["config"].read_text())
  config.retrieval_config.first_stage = "asmk"
  paths = sorted((root / "features").glob("*.delf"))
  index_dir = tmp_path / "index"
  first = index_first_stage(index_dir, root / "features", config, feature_paths=paths[:14])
  assert len(first.stage) == 14
  added = index_first_stage(index_dir, root / "features", config, feature_paths=paths)
  stage = added.stage
  assert isinstance(stage, AsmkStage) and len(stage) == 20 and not added.failures
  # The same as an index of all 20 images built at once with the same codebook.
  fresh = AsmkIndex(stage.asmk.dim, stage.asmk.params)
  fresh.set_codebook(stage.asmk.codebook())
  for path in paths:
    fresh.add(path.stem, read_features(path).descriptors)
  query = read_features(paths[3])
  expected = [(i, s) for i, s in fresh.search_images(query.descriptors) if s > 0]
  ranked = stage.rank(query, None, config.retrieval_config)
  assert [i for i, _ in ranked] == [i for i, _ in sorted(expected, key=lambda e: (-e[1], e[0]))]
  np.testing.assert_allclose([s for _, s in ranked], sorted((s for _, s in expected), reverse=True))
  before = dict(ranked)
  removed = [paths[0].stem, paths[5].stem]
  result = _tool(
    "build_index",
    f"--config_path={bench['config']}",
    f"--index_dir={index_dir}",
    _stage_override("asmk"),
    f"--remove_images={','.join(removed)}",
  )
  assert result.returncode == 0, result.stderr
  reopened = open_first_stage(index_dir, config.retrieval_config)
  assert len(reopened) == 18 and not any(name in reopened for name in removed)
  after = dict(reopened.rank(query, None, config.retrieval_config))
  assert set(after) == set(before) - set(removed)
  assert after == pytest.approx({name: before[name] for name in after})


@pytest.mark.slow
def test_an_index_of_another_stage_is_refused_in_one_line(bench, tmp_path):
  root = bench["root"]
  result = _tool(
    "build_index",
    f"--config_path={bench['config']}",
    f"--features_dir={root / 'features'}",
    f"--index_dir={root / 'votes'}",
    _stage_override("asmk"),
  )
  assert result.returncode == 2
  lines = _errors(result)
  assert len(lines) == 1 and "'votes'" in lines[0] and "'asmk'" in lines[0], result.stderr
  result = _tool(
    "perform_retrieval",
    f"--config_path={bench['config']}",
    f"--dataset_gnd_path={bench['gnd_path']}",
    f"--images_dir={bench['images_dir']}",
    f"--index_dir={root / 'asmk'}",
    f"--features_dir={root / 'features'}",
    f"--output_dir={tmp_path / 'out'}",
    _stage_override("global"),
  )
  assert result.returncode == 2
  lines = _errors(result)
  assert len(lines) == 1 and "'asmk'" in lines[0] and "'global'" in lines[0], result.stderr
  # The votes-only callers (serve, recognize) refuse another stage's folder too.
  votes = parse_config_text(bench["config"].read_text()).retrieval_config
  with pytest.raises(FirstStageError, match="first_stage 'asmk' but the config asks for .*'votes'"):
    load_index(root / "asmk", votes)


def test_unknown_first_stage_is_refused():
  config = parse_config_text('retrieval_config { first_stage: "bow" }')
  with pytest.raises(FirstStageError, match="'bow' is not one of 'votes', 'asmk', 'global'"):
    configured_stage(config.retrieval_config)


def _global_config():
  return parse_config_text('retrieval_config { first_stage: "global" }').retrieval_config


def test_global_stage_needs_delg_global_files(tmp_path):
  paths = [tmp_path / f"image_{i}.delf" for i in range(3)]
  with pytest.raises(FirstStageError, match=r"no \.delg_global files in .*use_global_features"):
    build_first_stage(tmp_path / "index", paths, _global_config(), log=lambda line: None)


def test_global_whitening_learned_stored_and_applied_to_queries(tmp_path):
  rng = np.random.default_rng(0)
  raw = rng.normal(size=(20, 8)).astype(np.float32) * np.linspace(3, 0.5, 8, dtype=np.float32)
  raw /= np.linalg.norm(raw, axis=1, keepdims=True)
  features_dir = tmp_path / "features"
  features_dir.mkdir()
  paths = []
  for i, row in enumerate(raw):
    write_global_descriptor(features_dir / global_file_name(f"image_{i:02d}"), row)
    paths.append(features_dir / f"image_{i:02d}.delf")
  index_dir = tmp_path / "index"
  stage, failures = build_first_stage(index_dir, paths, _global_config(), log=lambda line: None)
  assert not failures and isinstance(stage, GlobalStage)
  mean, projection = learn_pca_whitening(raw)
  stored = read_whitening(index_dir / "global")
  assert stored is not None
  np.testing.assert_array_equal(stored[0], mean)
  np.testing.assert_array_equal(stored[1], projection)
  whitened = apply_whitening(raw, mean, projection)
  np.testing.assert_allclose(stage.descriptors.descriptor("image_04"), whitened[4], atol=1e-6)
  # A query is whitened with the stored whitening, then compared by inner product.
  query = rng.normal(size=8).astype(np.float32)
  reopened = open_first_stage(index_dir, _global_config())
  ranked = reopened.rank(no_local_features(), query, _global_config())
  expected = whitened @ apply_whitening(query, mean, projection)
  assert [name for name, _ in ranked] == [f"image_{i:02d}" for i in np.argsort(-expected)]
  np.testing.assert_allclose([s for _, s in ranked], np.sort(expected)[::-1], atol=1e-5)
  # Without the query's global descriptor the stage cannot rank.
  with pytest.raises(FirstStageError, match="global descriptor"):
    reopened.rank(no_local_features(), None, _global_config())
  # Fewer than two images per dimension: no whitening is learned.
  small, _ = build_first_stage(
    tmp_path / "small", paths[:15], _global_config(), log=lambda line: None
  )
  assert read_whitening(tmp_path / "small" / "global") is None
  best = small.rank(no_local_features(), raw[0], _global_config())[0]
  assert best[0] == "image_00" and best[1] == pytest.approx(1, abs=1e-6)


def no_local_features():
  """Query local features with no features (the global stage does not use them)."""
  from delf_ret.features import LocalFeatures

  return LocalFeatures(
    np.zeros((0, 2), np.float32),
    np.zeros(0, np.float32),
    np.zeros((0, 8), np.float32),
    np.zeros(0, np.float32),
    np.zeros(0, np.float32),
  )


@pytest.mark.slow
def test_demo_ranks_with_the_configured_first_stage(bench, tmp_path):
  """run_demo (what delf_demo runs) with first_stage global, on the features extracted above."""
  import shutil

  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.retrieval.demo import bundled_demo_data
  from delf_ret.retrieval.demo import claim_output_dir
  from delf_ret.retrieval.demo import run_demo

  config = parse_config_text(bench["config"].read_text())
  config.retrieval_config.first_stage = "global"
  data = bundled_demo_data(BUNDLED_IMAGES)
  output = tmp_path / "demo_output"
  claim_output_dir(output, data, log=lambda line: None)
  shutil.copytree(bench["root"] / "features", output / "features")  # Reused, not extracted.
  summary = run_demo(config, data, output, DelfExtractor(config), log=lambda line: None)
  assert built_stage(output / "index") == "global"
  assert summary.mean_ap["reranked"]["medium"] == summary.mean_ap["reranked"]["medium"]
  results = summary.run.results
  assert len(results) == 14 and all(len(r.ranked) == 20 for r in results)
  assert all(any(e.inliers is not None for e in r.reranked) for r in results)
  assert all(path.is_file() for path in summary.pictures)

"""The default model's figures: the README and the model card quote the benchmark's JSON."""

import importlib.util
import json
import sys

import pytest

from conftest import REPO


def load_benchmark(name: str = "default_model"):
  """The module benchmarks/<name>.py (which imports its neighbours from that folder)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(
      f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(str(REPO / "benchmarks"))


def between(text, start, end):
  return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_and_model_card_tables_are_rendered_from_the_json():
  benchmark = load_benchmark()
  result = json.loads(benchmark.RESULT.read_text())
  table = benchmark.render_tables(result)
  for path in (REPO / "README.md", benchmark.MODEL_CARD):
    assert between(path.read_text(), benchmark.START, benchmark.END) == table, path
  card = benchmark.MODEL_CARD.read_text()
  rerun = json.loads(benchmark.RERUN.read_text()) if benchmark.RERUN.is_file() else None
  assert between(card, "<!-- training facts: start -->", "<!-- training facts: end -->") == (
    benchmark.render_training(result, rerun)
  )


def test_the_quoted_rerun_is_of_the_shipped_recipe():
  """The model card quotes a rerun only of the recipe that made the shipped model (a rerun
  JSON of an older model fails here); without one, the card claims none."""
  benchmark = load_benchmark()
  shipped = json.loads(benchmark.RESULT.read_text())["training"]
  card = benchmark.MODEL_CARD.read_text()
  if not benchmark.RERUN.is_file():
    assert "A rerun of the recipe" not in card
    return
  rerun = json.loads(benchmark.RERUN.read_text())["training"]
  assert rerun["training_steps"] == shipped["training_steps"]
  assert rerun["finished"] >= shipped["finished"]  # ISO dates.


def test_training_facts_quote_the_rerun_check():
  import copy

  benchmark = load_benchmark()
  result = json.loads(benchmark.RESULT.read_text())
  assert "A rerun" not in benchmark.render_training(result)
  same = benchmark.render_training(result, result)
  assert same.endswith(
    f"`benchmarks/results/{benchmark.RERUN.name}`): same weights (digest) "
    "as the reference; all 14 figures within 10%."
  )
  rerun = copy.deepcopy(result)
  rerun["weights_sha256"] = "ab" * 32
  rerun["attention_ranking"]["top_half_correct_share"] *= 2
  assert benchmark.render_training(result, rerun).endswith(
    "other weights (digest `abababababababab`); 1 of 14 figures outside 10%: "
    "attention top half, correct share."
  )


def test_docs_rerank_speed_table_is_rendered_from_its_json():
  module = load_benchmark("rerank_speed")
  assert module.TABLE_FILE == REPO / "docs" / "benchmarks.md"
  result = json.loads(module.RESULT.read_text())
  assert between(module.TABLE_FILE.read_text(), module.START, module.END) == (
    module.render_table(result)
  )


def test_first_stage_tables_are_rendered_from_their_json():
  module = load_benchmark("first_stage")
  result = json.loads(module.RESULT.read_text())
  assert between(module.DOC.read_text(), module.START, module.END) == module.render_table(result)
  readme = module.README.read_text()
  summary = between(readme, module.SUMMARY_START, module.SUMMARY_END)
  assert summary == module.render_summary(result)


def test_render_between_replaces_only_the_marked_block(tmp_path, capsys):
  results_io = load_benchmark("results_io")
  path = tmp_path / "doc.md"
  path.write_text("# Title\n<!-- t: start -->\nold\nrows\n<!-- t: end -->\ntail ✓\n")
  results_io.render_between(path, "| a |\n|---|", "<!-- t: start -->", "<!-- t: end -->")
  assert path.read_text() == "# Title\n<!-- t: start -->\n| a |\n|---|\n<!-- t: end -->\ntail ✓\n"
  assert capsys.readouterr().out == f"rendered {path}\n"
  before = path.read_text()
  for start, end in (
    ("<!-- u: start -->", "<!-- t: end -->"),
    ("<!-- t: end -->", "<!-- t: start -->"),
  ):
    with pytest.raises(results_io.MarkerError, match=str(path)):
      results_io.render_between(path, "x", start, end)
  assert path.read_text() == before


def test_rerun_comparison_names_the_figures_outside_the_tolerance():
  import copy

  benchmark = load_benchmark()
  result = json.loads(benchmark.RESULT.read_text())
  lines = benchmark.compare_figures(result, result)
  assert len(lines) == 15 and "ratio 1.000" in lines[0]
  assert lines[-1].endswith("all 14 figures within 10%")
  assert lines[-1].startswith("same weights (digest) as the reference")
  rerun = copy.deepcopy(result)
  rerun["weights_sha256"] = "0" * 64
  rerun["pairs"]["graf1.png/graf3.png"]["default_model"]["correct_inliers_10px"] = round(
    1.15 * result["pairs"]["graf1.png/graf3.png"]["default_model"]["correct_inliers_10px"]
  )
  rerun["ukbench"]["default_model"]["mAP"]["reranked"]["medium"] *= 0.95  # Within 10%.
  lines = benchmark.compare_figures(rerun, result)
  assert lines[-1] == "1 of 14 figures outside 10%: graf1/graf3 correct inliers < 10 px"
  assert "ukbench medium mAP, reranked" in lines[12] and "ratio 0.950" in lines[12]


@pytest.mark.slow  # Imports TensorFlow (delf_ret.model): about 20 s on 2 busy cores.
def test_the_json_is_of_the_shipped_weights():
  from delf_ret.default_model import WEIGHTS_FILE
  from delf_ret.default_model import default_model_dir
  from delf_ret.model.compact import weights_digest

  result = json.loads(load_benchmark().RESULT.read_text())
  assert result["model_dir"] == "delf_ret/default_model"
  assert result["weights_sha256"] == weights_digest(default_model_dir() / WEIGHTS_FILE)


def test_benchmark_results_record_the_environment(tmp_path):
  import numpy as np

  write_result = load_benchmark("results_io").write_result
  path = tmp_path / "results" / "x.json"
  write_result(path, {"figure": 1.5})
  written = json.loads(path.read_text())
  assert written["figure"] == 1.5
  assert written["environment"]["libraries"]["numpy"] == np.__version__
  assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # No temporary file left.
  write_result(path, {"figure": 2, "environment": {"cpu_model": "kept"}})
  assert json.loads(path.read_text())["environment"] == {"cpu_model": "kept"}

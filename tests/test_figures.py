"""The default model's figures: the README and the model card quote the benchmark's JSON."""

import importlib.util
import json
import sys

from conftest import REPO


def load_benchmark(name: str = "default_model"):
  """The module benchmarks/<name>.py (which imports its neighbours from that folder)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark",
                                                  REPO / "benchmarks" / f"{name}.py")
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
  assert between(card, "<!-- training facts: start -->", "<!-- training facts: end -->") == (
      benchmark.render_training(result))


def test_readme_rerank_speed_table_is_rendered_from_its_json():
  module = load_benchmark("rerank_speed")
  result = json.loads((REPO / "benchmarks" / "results" / "rerank_speed.json").read_text())
  assert between((REPO / "README.md").read_text(), module.START, module.END) == (
      module.render_table(result))

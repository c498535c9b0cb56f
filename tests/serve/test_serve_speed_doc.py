"""docs/serve.md's speed table is rendered from benchmarks/results/serve_speed.json."""

import importlib.util
import json
import sys

from conftest import REPO


def test_docs_serve_speed_table_is_rendered_from_its_json():
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(
      "serve_speed_benchmark", REPO / "benchmarks" / "serve_speed.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(REPO / "benchmarks"))
  result = json.loads(module.RESULT.read_text())
  text = module.TABLE_FILE.read_text()
  block = text.split(module.START, 1)[1].split(module.END, 1)[0].strip()
  assert block == module.render_table(result)
  assert result["database_photos"] == 1000

"""Writing benchmark results (JSON) for the scripts in this folder."""

import json
import pathlib


def write_result(path, result: dict) -> None:
  """Writes ``result`` as indented JSON to ``path`` (folders created) and says where."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {path}")

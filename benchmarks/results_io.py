"""Writing benchmark results (JSON) for the scripts in this folder."""

import json
import pathlib

from delf_ret.atomic import write_bytes_atomic
from delf_ret.provenance import environment


def write_result(path, result: dict) -> None:
  """Writes ``result`` as indented JSON to ``path`` (folders created; a temporary file, then
  a rename) and says where. Records the machine and library versions the figures came from
  under ``environment`` (the key of ``result`` itself if it has one)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  result = {**result, "environment": result.get("environment") or environment()}
  write_bytes_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
  print(f"wrote {path}")

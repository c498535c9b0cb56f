"""Writing benchmark results (JSON) and rendering their tables into the docs, for the scripts in
this folder."""

import json
import pathlib

from delf_ret.atomic import write_bytes_atomic
from delf_ret.errors import DelfRetError
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


class MarkerError(DelfRetError):
  """A file that a benchmark table is rendered into lacks the block's start or end marker."""


def render_between(path, block: str, start: str, end: str) -> None:
  """Replaces the text between the ``start`` and ``end`` markers of ``path`` with ``block``.

  The file keeps the markers, each followed / preceded by one newline:
  ``start\\nblock\\nend``; everything before ``start`` and after ``end`` is
  unchanged. Raises MarkerError naming the file when a marker is missing (or
  ``end`` does not follow ``start``). Written atomically; says where.
  """
  path = pathlib.Path(path)
  text = path.read_text(encoding="utf-8")
  head, found, rest = text.partition(start)
  if not found or end not in rest:
    raise MarkerError(f"{path}: no {start} ... {end} markers to render the table between")
  tail = rest.split(end, 1)[1]
  write_bytes_atomic(path, f"{head}{start}\n{block}\n{end}{tail}".encode("utf-8"))
  print(f"rendered {path}")

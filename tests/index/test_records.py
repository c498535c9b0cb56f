"""The image records file of the ASMK and global first stages (delf_ret.index.records)."""

import pytest

from delf_ret.index.local_index import ImageRecord
from delf_ret.index.records import RECORDS_FILE
from delf_ret.index.records import RecordsError
from delf_ret.index.records import merge_records
from delf_ret.index.records import read_records
from delf_ret.index.records import update_records_file
from delf_ret.index.records import updated_records
from delf_ret.index.records import write_records


def test_records_file_functions(tmp_path):
  a = {"x": ImageRecord("/p/x.jpg", "tower"), "y": ImageRecord(None, "bridge")}
  write_records(tmp_path, a)
  assert read_records(tmp_path) == a and read_records(tmp_path, known={"y"}) == {"y": a["y"]}
  assert read_records(tmp_path / "none") == {}
  changed = updated_records(a, paths={"y": "rel/y.jpg"}, labels={"x": ""}, remove=["z"])
  assert changed["x"] == ImageRecord("/p/x.jpg", None)
  assert changed["y"].path is not None and changed["y"].path.endswith("/rel/y.jpg")
  merged = merge_records([a, {"x": ImageRecord(None, "spire"), "w": ImageRecord("/p/w.jpg")}])
  assert merged == {**a, "x": ImageRecord("/p/x.jpg", "spire"), "w": ImageRecord("/p/w.jpg")}
  with pytest.raises(RecordsError, match="cannot record .*'x'.*line"):
    updated_records(a, labels={"x": "two\nlines"})
  (tmp_path / RECORDS_FILE).write_text('{"format_version": 2, "records": {}}')
  with pytest.raises(RecordsError, match=r"records.json: format version 2, expected 1"):
    read_records(tmp_path)
  (tmp_path / RECORDS_FILE).write_text('{"format_version": 1, "records": {"x": {"path": "a"}}}')
  with pytest.raises(RecordsError, match=r"records.json: the image records are damaged"):
    read_records(tmp_path)


def test_update_records_file_keeps_only_indexed_images_and_writes_only_changes(tmp_path):
  records = update_records_file(tmp_path, ["a"], paths={"a": "/p/a.jpg", "b": "/p/b.jpg"})
  assert records == {"a": ImageRecord("/p/a.jpg")} == read_records(tmp_path)
  stamp = (tmp_path / RECORDS_FILE).stat().st_mtime_ns
  assert update_records_file(tmp_path, ["a"], labels={}) == records
  assert (tmp_path / RECORDS_FILE).stat().st_mtime_ns == stamp
  assert update_records_file(tmp_path, [], remove=["a"]) == {} == read_records(tmp_path)

"""A resumed prepare_gldv2 still lists the images it skipped in the earlier run."""

from conftest import write_gldv2_layout
from delf_ret.train import gldv2


def test_resumed_run_reports_earlier_skips(tmp_path, shared_data):
  layout = write_gldv2_layout(tmp_path / "gldv2", shared_data, corrupt=True)
  out = tmp_path / "shards"
  first = gldv2.prepare_gldv2(
    layout["csv"], layout["train"], out, num_shards=3, log=lambda line: None
  )
  assert [path.stem for path, _ in first] == [layout["corrupt_id"]]
  lines = []
  again = gldv2.prepare_gldv2(layout["csv"], layout["train"], out, num_shards=3, log=lines.append)
  assert [(path.stem, reason) for path, reason in again] == [
    (path.stem, reason) for path, reason in first
  ]
  assert any("1 images skipped when it was written" in line for line in lines)

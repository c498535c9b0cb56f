"""query_index with many query photos (one run, resumable), and its contact sheet from the
image paths the index recorded.

A small random-weight model (conftest's config_path) on the bundled demo photos: only the
mechanics are checked here, not retrieval quality.
"""

import csv
import json
import shutil
import signal
import subprocess

import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

pytestmark = pytest.mark.slow  # Every test runs the tools as subprocesses.

DATABASE = {"sacre_coeur_1": "sacre_coeur", "graffiti_1": "graffiti_wall", "opencv_home": ""}


@pytest.fixture(scope="module")
def database(tmp_path_factory, config_path):
  root = tmp_path_factory.mktemp("batch")
  (root / "photos").mkdir()
  for name in DATABASE:
    shutil.copyfile(BUNDLED_IMAGES / f"{name}.jpg", root / "photos" / f"{name}.jpg")
  (root / "labels.csv").write_text("".join(f"{n}.jpg,{label}\n" for n, label in DATABASE.items()))
  result = run_command(
    [
      installed_script("build_index"),
      f"--config_path={config_path}",
      f"--images_dir={root / 'photos'}",
      f"--labels_csv={root / 'labels.csv'}",
      f"--features_dir={root / 'features'}",
      f"--index_dir={root / 'index'}",
    ],
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  return root


def query_index(database, config_path, *flags):
  return [
    installed_script("query_index"),
    f"--config_path={config_path}",
    f"--index_dir={database / 'index'}",
    f"--features_dir={database / 'features'}",
    "--num_results=2",
    *flags,
  ]


def _default_sigint() -> None:
  signal.signal(signal.SIGINT, signal.SIG_DFL)  # Even where the test runs with SIGINT ignored.


def test_many_queries_one_run_interrupted_then_resumed(database, config_path, tmp_path):
  names = ["sacre_coeur_2", "graffiti_3", "opencv_messi5", "roofs_1", "river_1", "aero_1"]
  lines = [str(BUNDLED_IMAGES / f"{name}.jpg") for name in names]
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
  lines.insert(2, str(tmp_path / "broken.jpg"))
  (tmp_path / "queries.txt").write_text("\n".join(lines) + "\n")
  output_json, output_csv = tmp_path / "top.json", tmp_path / "top.csv"
  command = query_index(
    database,
    config_path,
    f"--list_images_path={tmp_path / 'queries.txt'}",
    f"--output_json={output_json}",
    f"--output_csv={output_csv}",
  )
  process = subprocess.Popen(
    command,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    stdin=subprocess.DEVNULL,
    text=True,
    env=tool_env(),
    preexec_fn=_default_sigint,
  )
  try:
    line = process.stdout.readline()
    while line and not line.startswith("[1/7]"):
      line = process.stdout.readline()
    assert "features, top" in line, line  # The first query is answered (and journaled).
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 130, stderr
  assert not output_json.exists() and (tmp_path / "top.json.partial").is_file()
  # The same command resumes: the first query is not run again.
  result = run_command(command, timeout=600, env=tool_env())
  assert result.returncode == 1, result.stderr  # One photo could not be read.
  assert "[1/7]" in result.stdout and "answered in an earlier run" in result.stdout
  assert result.stdout.count("answered in an earlier run") < 7
  assert "1 queries failed" in result.stderr and "broken.jpg" in result.stderr
  assert "Traceback" not in result.stderr
  assert "answered 6 of 7 queries" in result.stdout
  data = json.loads(output_json.read_text())
  assert [q["query"] for q in data["queries"]] == [line for line in lines if "broken" not in line]
  assert data["failed"][0]["query"] == str(tmp_path / "broken.jpg")
  for query in data["queries"]:
    assert [r["rank"] for r in query["results"]] == [1, 2] and query["num_features"] > 0
    assert all(r["label"] == (DATABASE[r["image_id"]] or None) for r in query["results"])
  with open(output_csv, newline="") as handle:
    rows = list(csv.DictReader(handle))
  assert list(rows[0]) == ["query", "rank", "image_id", "score", "inliers", "verified", "label"]
  assert len(rows) == 12 and rows[0]["query"] == lines[0]
  assert not (tmp_path / "top.json.partial").exists()


def test_contact_sheet_from_recorded_paths_and_a_clear_error_without_them(
  database, config_path, tmp_path
):
  query = f"--image={BUNDLED_IMAGES / 'sacre_coeur_2.jpg'}"
  result = run_command(
    query_index(database, config_path, query, f"--contact_sheet={tmp_path / 'top.png'}"),
    timeout=600,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "top.png").read_bytes()[:4] == b"\x89PNG"
  assert "label" in result.stdout.splitlines()[1]  # The index has labels: a label column.
  # An index built from feature files alone records no paths.
  bare = run_command(
    [
      installed_script("build_index"),
      f"--config_path={config_path}",
      f"--features_dir={database / 'features'}",
      f"--index_dir={tmp_path / 'bare'}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert bare.returncode == 0, bare.stderr
  flags = (f"--index_dir={tmp_path / 'bare'}", f"--contact_sheet={tmp_path / 'no.png'}")
  result = run_command(query_index(database, config_path, query, *flags), timeout=600)
  # Refused before any work: one line naming the index and the way out.
  assert result.returncode == 2
  assert result.stderr.startswith(f"error: {tmp_path / 'bare'} records no image paths")
  assert "give --database_images_dir" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.png").exists()

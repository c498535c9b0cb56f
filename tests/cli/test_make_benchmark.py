"""make_benchmark: a Revisited-layout benchmark from image,label rows, read by perform_retrieval.

Made from the bundled demo photos and their labels.csv; retrieval runs with a small
random-weight model (conftest's config_path), so only the pipeline is checked, not its mAP.
"""

import json
import pickle

import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

pytestmark = pytest.mark.slow  # Every test runs the tools as subprocesses.

# Two places (two photos each) and a distractor of the bundled labels.csv.
ROWS = [
  "sacre_coeur_1.jpg,sacre_coeur",
  "sacre_coeur_2.jpg,sacre_coeur",
  "graffiti_1.jpg,graffiti_wall",
  "graffiti_3.jpg,graffiti_wall",
  "opencv_home.jpg,",
]


def make_benchmark(labels, output, *flags):
  return run_command(
    [
      installed_script("make_benchmark"),
      f"--labels_csv={labels}",
      f"--images_dir={BUNDLED_IMAGES}",
      f"--output_dir={output}",
      *flags,
    ],
    timeout=120,
    env=tool_env(),
  )


def test_benchmark_from_labels_then_perform_retrieval(tmp_path, config_path):
  bench = tmp_path / "bench"
  result = make_benchmark(BUNDLED_IMAGES / "labels.csv", bench, "--name=demo")
  assert result.returncode == 0, result.stderr
  assert "demo: 20 photos, 14 queries of 7 labels, 6 distractors" in result.stdout
  gnd = pickle.loads((bench / "gnd_demo.pkl").read_bytes())
  assert len(gnd["imlist"]) == 20 and len(gnd["qimlist"]) == 14
  query = gnd["qimlist"].index("roofs_1")
  imlist = gnd["imlist"]
  assert [imlist[i] for i in gnd["gnd"][query]["easy"]] == ["roofs_2"]
  assert [imlist[i] for i in gnd["gnd"][query]["junk"]] == ["roofs_1"]
  assert gnd["gnd"][query]["hard"] == [] and len(gnd["gnd"][query]["bbx"]) == 4
  assert sorted(p.name for p in (bench / "jpg").iterdir()) == sorted(f"{n}.jpg" for n in imlist)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # No leftovers.
  # The benchmark's database indexed, then every query run by perform_retrieval (queries are
  # database photos here: their feature files are read as query features).
  index = run_command(
    [
      installed_script("build_index"),
      f"--config_path={config_path}",
      f"--dataset_gnd_path={bench / 'gnd_demo.pkl'}",
      f"--images_dir={bench / 'jpg'}",
      f"--features_dir={tmp_path / 'features'}",
      f"--index_dir={tmp_path / 'index'}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert index.returncode == 0, index.stderr
  retrieval = run_command(
    [
      installed_script("perform_retrieval"),
      f"--config_path={config_path}",
      "--config_override=retrieval_config.rerank_top_n=3",
      f"--dataset_gnd_path={bench / 'gnd_demo.pkl'}",
      f"--index_dir={tmp_path / 'index'}",
      f"--features_dir={tmp_path / 'features'}",
      f"--query_features_dir={tmp_path / 'features'}",
      f"--output_dir={tmp_path / 'results'}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert retrieval.returncode == 0, retrieval.stderr
  metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
  assert metrics["num_queries"] == 14
  assert 0 <= metrics["stages"]["reranked"]["medium"]["mAP"] <= 100
  # An existing benchmark is replaced only with --overwrite.
  again = make_benchmark(BUNDLED_IMAGES / "labels.csv", bench, "--name=demo")
  assert again.returncode == 2 and "--overwrite" in again.stderr
  # Photos of the folder that the labels file does not list are left out.
  labels = tmp_path / "labels.csv"
  labels.write_text("image,label\n" + "\n".join(ROWS) + "\n")
  replaced = make_benchmark(labels, bench, "--name=demo", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  assert "demo: 5 photos, 4 queries of 2 labels, 1 distractors" in replaced.stdout
  assert len(pickle.loads((bench / "gnd_demo.pkl").read_bytes())["imlist"]) == 5
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
  "rows, message",
  [
    (["sacre_coeur_1.jpg,sacre_coeur", "missing.jpg,x"], "row 3 names image 'missing', not found"),
    (["sacre_coeur_1.jpg,a/b"], "row 2: label 'a/b' cannot name files"),
    (["sacre_coeur_1.jpg,x", "sacre_coeur_1.jpg,y"], "row 3 lists image 'sacre_coeur_1' again"),
    (["sacre_coeur_1.jpg,x,extra"], "row 2 has 3 fields"),
    (["opencv_home.jpg,"], "gives no photo a label"),
  ],
)
def test_bad_rows_are_refused_with_their_row(tmp_path, rows, message):
  labels = tmp_path / "labels.csv"
  labels.write_text("image,label\n" + "\n".join(rows) + "\n")
  result = make_benchmark(labels, tmp_path / "bench")
  assert result.returncode == 2
  assert result.stderr.startswith(f"error: {labels}") and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]  # Nothing written.

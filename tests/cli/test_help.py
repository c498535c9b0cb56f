"""Every installed console script prints its own usage and flags with their help texts."""

import re

import pytest

from conftest import REPO
from conftest import installed_script
from conftest import run_command

# Every test runs an installed console script in a subprocess.
pytestmark = pytest.mark.slow

SCRIPTS = re.findall(r'"(\w+)=delf_ret\.cli\.(\w+):run"', (REPO / "setup.py").read_text())
# One flag of each tool and a word of its help text.
OWN_FLAG = {
  "build_index": "--dataset_gnd_path",
  "build_index_beam": "--beam_pipeline_options",
  "create_delf_model": "--backbone_weights",
  "delf_demo": "--output_dir",
  "delf_serve": "--port",
  "download_dataset": "--sha256",
  "export_delf_model": "--compact_path",
  "extract_features": "--overwrite",
  "extract_features_beam": "--beam_pipeline_options",
  "learn_pca": "--max_images",
  "make_benchmark": "--labels_csv",
  "match_images": "--image_1_path",
  "merge_index": "--shards_dir",
  "perform_retrieval": "--dataset_gnd_path",
  "prepare_gldv2": "--num_shards",
  "prepare_labelled_photos": "--label_column",
  "query_index": "--contact_sheet",
  "recognize": "--calibrate",
  "train_delf": "--stage",
}


@pytest.mark.parametrize("script", [name for name, _ in SCRIPTS])
def test_help_of_the_installed_script_lists_its_flags(script):
  path = installed_script(script)
  result = run_command([path, "--help"], timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]  # Not absl's 1 (issue 27).
  assert "Traceback" not in result.stderr
  assert f"{script}:" in result.stdout or "Usage" in result.stdout
  pattern = re.compile(r"--(\[no\])?" + re.escape(OWN_FLAG[script].lstrip("-")) + r":")
  assert pattern.search(result.stdout), result.stdout[:2000]
  # A flag line is followed by its help text, not just the usage line.
  lines = result.stdout.splitlines()
  flag_line = next(i for i, line in enumerate(lines) if pattern.search(line))
  assert len(" ".join(lines[flag_line : flag_line + 2]).split(":", 1)[-1].strip()) > 10


def test_progress_bar_on_request_and_silenced_with_noprogress(tmp_path, shared_data):
  from PIL import Image

  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("graf1.png", "box.png"):
    with Image.open(shared_data / "pairs" / name) as image:
      image.convert("RGB").resize((160, 120)).save(photos / name)
  script = installed_script("extract_features")
  run = lambda out, flag: run_command(  # noqa: E731
    [script, f"--images_dir={photos}", f"--output_dir={tmp_path / out}", flag], timeout=600
  )
  shown = run("a", "--progress")
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "2/2" in shown.stderr and "100%" in shown.stderr  # tqdm's bar, on stderr.
  assert "[2/2] graf1.png" in shown.stdout  # The per-image lines stay on stdout.
  quiet = run("b", "--noprogress")
  assert quiet.returncode == 0 and "100%" not in quiet.stderr
  assert "[2/2] graf1.png" in quiet.stdout

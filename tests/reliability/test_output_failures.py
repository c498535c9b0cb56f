"""Per-image write failures are reported and the batch goes on; a bad output folder stops it."""

import os

import pytest

from conftest import installed_script
from conftest import run_command

# Every test runs extract_features in a subprocess (20-30 s).
pytestmark = pytest.mark.slow


def _run(*args):
  return run_command(list(args), timeout=600)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data):
  """Two small real photos, one of them under a 250-character name."""
  from PIL import Image

  folder = tmp_path_factory.mktemp("photos")
  for index, (source, name) in enumerate(
    [("box.png", "box.png"), ("graf1.png", "g" * 246 + ".png")]
  ):
    with Image.open(shared_data / "pairs" / source) as image:
      image.convert("RGB").resize((160, 120)).save(folder / name)
  return folder


def test_a_name_too_long_fails_alone_and_the_batch_goes_on(photos, tmp_path):
  out = tmp_path / "features"
  result = _run(
    installed_script("extract_features"), f"--images_dir={photos}", f"--output_dir={out}"
  )
  assert result.returncode == 1, result.stderr
  assert "cannot write" in result.stderr and "Traceback" not in result.stderr
  assert (out / "box.delf").is_file()


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_an_unusable_output_folder_stops_with_one_line(photos, tmp_path, kind):
  out = tmp_path / "out"
  if kind == "file":
    out.write_text("I am a file")
    message = "is a file, not a folder"
  else:
    message = "cannot write into the output folder"
    if os.geteuid() == 0:  # Root writes into read-only folders; /proc refuses new folders.
      out = "/proc/delf_ret_output_test"
    else:
      out.mkdir()
      out.chmod(0o500)
  result = _run(
    installed_script("extract_features"), f"--images_dir={photos}", f"--output_dir={out}"
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error:") and message in result.stderr
  assert "Traceback" not in result.stderr

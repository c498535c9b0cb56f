"""Huge images: refused before decoding above the pixel limit, extracted in bounded memory below it."""

import sys

import pytest
from PIL import Image

from conftest import installed_script
from conftest import run_command

# Every test runs a tool in a subprocess (20-40 s).
pytestmark = pytest.mark.slow


def _peak_child_rss_gb(command):
  """Runs ``command`` in a fresh child and returns (result, its peak resident memory in GB)."""
  probe = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True,"
    " text=True, stdin=subprocess.DEVNULL); sys.stdout.write(str(resource.getrusage("
    "resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n' + r.stdout); sys.stderr.write(r.stderr);"
    " sys.exit(r.returncode)"
  )
  result = run_command([sys.executable, "-c", probe, *command], timeout=600)
  peak_kb, _, stdout = result.stdout.partition("\n")
  return result, stdout, int(peak_kb) / 2**20


def test_a_12000x9000_jpeg_is_refused_before_decoding(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.new("RGB", (12000, 9000), (90, 120, 150)).save(photos / "huge.jpg", quality=50)
  Image.new("RGB", (320, 240), (20, 60, 90)).save(photos / "small.png")
  result, stdout, peak = _peak_child_rss_gb(
    [
      installed_script("extract_features"),
      f"--images_dir={photos}",
      f"--output_dir={tmp_path / 'f'}",
    ]
  )
  assert result.returncode == 1, result.stderr[-2000:]  # One image failed, the other extracted.
  assert "huge.jpg: image too large (12000x9000" in result.stderr
  assert (tmp_path / "f" / "small.delf").is_file()
  assert peak < 2.5, f"peak memory {peak:.2f} GB"


def test_an_image_just_under_the_pixel_limit_extracts_in_bounded_memory(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.new("RGB", (10000, 8900), (90, 120, 150)).save(photos / "big.png")  # 89.0 megapixels.
  result, stdout, peak = _peak_child_rss_gb(
    [
      installed_script("extract_features"),
      f"--images_dir={photos}",
      f"--output_dir={tmp_path / 'f'}",
    ]
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "f" / "big.delf").is_file()
  assert peak < 4.0, f"peak memory {peak:.2f} GB"  # docs/limits.md: about 3 GB at the pixel limit.

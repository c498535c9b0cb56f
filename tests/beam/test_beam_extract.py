"""extract_features_beam on real photos, through the console script of the Beam virtual
environment (apache-beam, protobuf 6.31; tests/beam/conftest.py): the same feature files as
extract_features (with global descriptors too), a killed pipeline resumed, a corrupt image
reported."""

import importlib.util
import os
import shutil
import signal
import subprocess
import time

import pytest

from beam.conftest import GLOBAL_OVERRIDES
from beam.conftest import GLOBAL_PHOTOS
from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

# With global descriptors: every pipeline writes .delf and .delg_global files (beam/conftest.py).
PHOTOS = GLOBAL_PHOTOS
TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"
# The environment's own delf-ret and packages: no PYTHONPATH.
BEAM_ENV = {
  **{key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
  "TF_CPP_MIN_LOG_LEVEL": "2",
}


@pytest.fixture(scope="module")
def photos(global_photos):
  return global_photos


@pytest.fixture(scope="module")
def reference(global_features):
  """The feature folder of the single-machine extract_features (this interpreter, protobuf 7)."""
  return global_features


def beam_command(beam_venv, images_dir, output_dir, *extra):
  return [
    str(beam_venv / "extract_features_beam"),
    f"--images_dir={images_dir}",
    f"--output_dir={output_dir}",
    *GLOBAL_OVERRIDES,
    *extra,
  ]


def folder_bytes(folder):
  """{file name: bytes} of every file in ``folder``, temporary files included."""
  return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow  # The console script of this environment, which loads TensorFlow.
def test_without_apache_beam_one_line_names_the_extra(tmp_path):
  if importlib.util.find_spec("apache_beam") is not None:
    pytest.skip("apache-beam is installed in this environment")
  output = tmp_path / "features"
  command = [installed_script("extract_features_beam"), f"--images_dir={BUNDLED_IMAGES}"]
  # As a user runs it: the tool quiets TensorFlow's start-up notices itself.
  env = {key: value for key, value in tool_env().items() if key != "TF_CPP_MIN_LOG_LEVEL"}
  result = run_command([*command, f"--output_dir={output}"], timeout=600, env=env)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
    "error: extracting with Beam needs apache-beam (No module named 'apache_beam'): "
    "pip install 'delf-ret[beam]'"
  ]
  assert not output.exists()


@pytest.mark.slow  # Builds (or reuses) the Beam environment; runs a child Python.
def test_protos_import_under_protobuf_6(beam_venv):
  code = (
    "import google.protobuf, delf_ret.config as c;"
    "assert google.protobuf.__version__.startswith('6.'), google.protobuf.__version__;"
    "print(c.parse_config_text('max_image_size: 64').max_image_size)"
  )
  result = run_command([str(beam_venv / "python"), "-W", "error", "-c", code], timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "64"
  assert result.stderr == ""


@pytest.mark.slow  # Two worker processes, each loading TensorFlow and the default model.
def test_two_workers_write_the_bytes_of_extract_features(beam_venv, photos, reference, tmp_path):
  output = tmp_path / "features"
  command = beam_command(beam_venv, photos, output, f"--beam_pipeline_options={TWO_WORKERS}")
  result = run_command(command, timeout=600, env=BEAM_ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"summary: {len(PHOTOS)} extracted, 0 skipped" in result.stdout
  assert "and a 1024-d global descriptor" in result.stderr + result.stdout
  assert folder_bytes(output) == folder_bytes(reference)  # .delf and .delg_global files.
  again = run_command(command, timeout=600, env=BEAM_ENV)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "nothing left to do" in again.stdout


def _kill_after_first_feature_file(command, output, timeout=600):
  """Starts ``command`` in its own session; SIGKILLs its process group (the pipeline and any
  workers) once a feature file appears in ``output``."""
  process = subprocess.Popen(
    command,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env=BEAM_ENV,
    start_new_session=True,
  )
  deadline = time.time() + timeout
  while not (output.is_dir() and any(output.glob("*.delf"))):
    assert process.poll() is None and time.time() < deadline, "no feature file was written"
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()


@pytest.mark.slow  # Two pipeline runs on real photos, the first killed.
def test_killed_pipeline_resumes_to_the_same_bytes(beam_venv, photos, reference, tmp_path):
  output = tmp_path / "features"
  command = beam_command(beam_venv, photos, output)
  _kill_after_first_feature_file(command, output)
  written = sorted(path.name for path in output.glob("*.delf"))
  assert 0 < len(written) < len(PHOTOS)
  # What a worker killed while writing leaves: an unfinished image's temporary file (an old one:
  # delf_ret.atomic removes those untouched for a minute) and a finished image's.
  unfinished = next(name for name in PHOTOS if f"{name}.delf" not in written)
  leftovers = [output / f".{unfinished}.delf.delfret-abcd1234.tmp"]
  leftovers.append(output / f".{written[0]}.delfret-efgh5678.tmp")
  for path in leftovers:
    path.write_bytes(b"partial")
  os.utime(leftovers[0], (time.time() - 3600, time.time() - 3600))
  result = run_command(command, timeout=600, env=BEAM_ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{len(written)} skipped" in result.stdout
  assert folder_bytes(output) == folder_bytes(reference)  # No temporary file either.


@pytest.mark.slow  # A pipeline run on real photos.
def test_corrupt_image_is_reported_and_the_rest_extracted(beam_venv, photos, reference, tmp_path):
  images = tmp_path / "images"
  shutil.copytree(photos, images)
  (images / "broken.jpg").write_bytes((photos / f"{PHOTOS[0]}.jpg").read_bytes()[:3000])
  output = tmp_path / "features"
  result = run_command(beam_command(beam_venv, images, output), timeout=600, env=BEAM_ENV)
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"summary: {len(PHOTOS)} extracted, 0 skipped (done before), 1 failed" in result.stdout
  assert f"1 of {len(PHOTOS) + 1} images failed:" in result.stderr
  assert "broken.jpg: corrupt or unreadable image: truncated file" in result.stderr
  assert "Traceback" not in result.stderr
  assert folder_bytes(output) == folder_bytes(reference)


# Beam's local file system under the scheme mirror:// (mirror:///tmp/x is /tmp/x), registered
# in the tool's process: images, list file and features on "another" file system.
MIRROR_RUN = """
import sys
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "mirror://"


def local(path):
  return path[len(PREFIX):] if path.startswith(PREFIX) else path


class MirrorFileSystem(LocalFileSystem):
  @classmethod
  def scheme(cls):
    return "mirror"

  def join(self, base, *parts):
    joined = super().join(local(base), *parts)
    return PREFIX + joined if base.startswith(PREFIX) else joined

  def split(self, path):
    head, tail = super().split(local(path))
    return (PREFIX + head if path.startswith(PREFIX) else head), tail

  def _list(self, prefix):
    for found in super()._list(local(prefix)):
      yield FileMetadata(PREFIX + found.path, found.size_in_bytes, found.last_updated_in_seconds)

  def create(self, path, *args, **kwargs):
    return super().create(local(path), *args, **kwargs)

  def open(self, path, *args, **kwargs):
    return super().open(local(path), *args, **kwargs)

  def exists(self, path):
    return super().exists(local(path))

  def rename(self, sources, targets):
    return super().rename([local(p) for p in sources], [local(p) for p in targets])

  def delete(self, paths):
    return super().delete([local(p) for p in paths])


from delf_ret.cli.extract_features_beam import run

sys.argv = ["extract_features_beam", *sys.argv[1:]]
run()
"""


@pytest.mark.slow  # A pipeline run on real photos.
def test_images_and_features_on_another_file_system(beam_venv, photos, reference, tmp_path):
  images = tmp_path / "images"
  shutil.copytree(photos, images)
  (images / "notes.txt").write_text("not an image: left out of the folder's images")
  listing = tmp_path / "list.txt"
  listing.write_text("".join(f"images/{name}.jpg\n" for name in PHOTOS) + "images/gone.jpg\n")
  output = tmp_path / "features"
  command = [str(beam_venv / "python"), "-c", MIRROR_RUN, f"--list_images_path=mirror://{listing}"]
  result = run_command(
    [*command, f"--output_dir=mirror://{output}", *GLOBAL_OVERRIDES],
    timeout=600,
    env=BEAM_ENV,
    cwd=tmp_path,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"summary: {len(PHOTOS)} extracted, 0 skipped (done before), 1 failed" in result.stdout
  assert f"mirror://{tmp_path}/images/gone.jpg: cannot read" in result.stderr
  assert folder_bytes(output) == folder_bytes(reference)
  by_folder = [str(beam_venv / "python"), "-c", MIRROR_RUN, f"--images_dir=mirror://{images}"]
  again = run_command(
    [*by_folder, f"--output_dir=mirror://{output}", *GLOBAL_OVERRIDES],
    timeout=600,
    env=BEAM_ENV,
    cwd=tmp_path,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"summary: 0 extracted, {len(PHOTOS)} skipped" in again.stdout


@pytest.mark.slow  # The Beam environment's tool, which loads TensorFlow (no pipeline runs).
def test_a_list_on_another_file_system_that_is_not_utf8_is_one_line(beam_venv, tmp_path):
  listing = tmp_path / "list.txt"
  listing.write_bytes(b"caf\xe9.jpg\n")  # Latin-1, not UTF-8.
  command = [str(beam_venv / "python"), "-c", MIRROR_RUN, f"--list_images_path=mirror://{listing}"]
  result = run_command(
    [*command, f"--output_dir=mirror://{tmp_path / 'features'}"], timeout=600, env=BEAM_ENV
  )
  assert result.returncode == 2, result.stderr[-3000:]
  # (Before it, TensorFlow's and Beam's start-up notices of this direct run.)
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: image list mirror://{listing}: not a UTF-8 text file (invalid continuation byte "
    "at byte 3)"
  )

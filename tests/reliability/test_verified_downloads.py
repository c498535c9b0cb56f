"""Downloads are checked against known SHA-256 digests; archives cannot overwrite their own files."""

import functools
import http.server
import pickle
import threading

import pytest

from conftest import installed_script
from conftest import run_command
from conftest import tgz
from delf_ret.datasets.download import DATASETS
from delf_ret.datasets.download import DownloadError
from delf_ret.datasets.download import download_dataset
from delf_ret.datasets.download import unpack


@pytest.fixture
def tampered_mirror(tmp_path):
  """A loopback server whose gnd_roxford5k.pkl is not the published file."""
  root = tmp_path / "mirror"
  root.mkdir()
  tgz(root / "oxbuild_images-v1.tgz", {"oxbuild_images/all_souls_000001.jpg": b"\xff\xd8jpeg"})
  (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": []}))
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{server.server_port}", root
  server.shutdown()


def test_the_published_ground_truth_digests_are_known():
  digests = {f.file_name: f.sha256 for files in DATASETS.values() for f in files}
  assert digests["gnd_roxford5k.pkl"] == (
    "ba7967754bd2d7d2210a5799f9c45ad5835e269a80ef9d3eba44caa35816c471"
  )
  assert digests["gnd_rparis6k.pkl"] == (
    "d2e729a5293dda7dda8a15c8383424a42e4964a2c4cfea2f32fa85d11d2df499"
  )


def test_a_tampered_file_is_deleted_and_the_run_fails(tampered_mirror, tmp_path):
  url, _ = tampered_mirror
  lines = []
  with pytest.raises(
    DownloadError, match="gnd_roxford5k.pkl: SHA-256 .* differs from the expected ba7967"
  ):
    download_dataset("roxford5k", tmp_path / "data", mirror_url=url, log=lines.append)
  folder = tmp_path / "data" / "roxford5k"
  assert not (folder / "gnd_roxford5k.pkl").exists()
  assert not (folder / "downloads" / "gnd_roxford5k.pkl").exists()
  # The image archive has no published digest: its digest is printed for the user to compare.
  assert any(line.startswith("oxbuild_images-v1.tgz: no known SHA-256") for line in lines)


@pytest.mark.slow  # Runs download_dataset in a subprocess.
def test_cli_checks_given_digests_and_exits_2(tampered_mirror, tmp_path):
  url, root = tampered_mirror
  script = installed_script("download_dataset")
  wrong = "0" * 64
  result = run_command(
    [
      script,
      "--dataset=oxford5k",
      f"--output_dir={tmp_path / 'data'}",
      f"--mirror_url={url}",
      f"--sha256=oxbuild_images-v1.tgz={wrong}",
    ],
    timeout=300,
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().startswith("error: oxbuild_images-v1.tgz: SHA-256")
  assert not (tmp_path / "data" / "oxford5k" / "jpg").exists()
  result = run_command(
    [
      script,
      "--dataset=oxford5k",
      f"--output_dir={tmp_path / 'data'}",
      "--sha256=oxbuild_images-v1.tgz=abc",
    ],
    timeout=300,
  )
  assert result.returncode == 2 and "expected FILE=<64 hex digits>" in result.stderr


def test_archive_members_with_one_base_name_are_an_error(tmp_path):
  archive = tmp_path / "images.tgz"
  tgz(archive, {"a/x.jpg": b"1", "b/x.jpg": b"2"})
  with pytest.raises(DownloadError, match="a/x.jpg and b/x.jpg would both become jpg/x.jpg"):
    unpack(archive, tmp_path / "out", "jpg")

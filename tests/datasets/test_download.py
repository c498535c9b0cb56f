"""Dataset download helper against a local HTTP server that serves the official file names."""

import functools
import http.server
import os
import pickle
import threading

import pytest

from conftest import run_cli
from conftest import tgz
from delf_ret.datasets.download import DATASETS
from delf_ret.datasets.download import DownloadError
from delf_ret.datasets.download import download_dataset
from delf_ret.evaluation.ground_truth import read_original_gt
from delf_ret.evaluation.ground_truth import read_revisited_gnd


class RangeHandler(http.server.SimpleHTTPRequestHandler):
  """Serves files, honouring "Range: bytes=N-" (206, or 416 past the end) like real servers."""

  def log_message(self, *args):
    pass

  def do_GET(self):
    requested = self.headers.get("Range")
    path = self.translate_path(self.path)
    if not requested or not os.path.isfile(path):
      return super().do_GET()
    data = open(path, "rb").read()
    start = int(requested.removeprefix("bytes=").rstrip("-"))
    if start >= len(data):
      self.send_error(416)
      return
    self.send_response(206)
    self.send_header("Content-Length", str(len(data) - start))
    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    self.end_headers()
    self.wfile.write(data[start:])


@pytest.fixture
def mirror(tmp_path, shared_data):
  """A loopback server holding tiny stand-ins for the Oxford files, under their real names."""
  root = tmp_path / "mirror"
  root.mkdir()
  photo = (shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg").read_bytes()
  tgz(
    root / "oxbuild_images-v1.tgz",
    {
      "oxbuild_images/all_souls_000001.jpg": photo,
      "oxbuild_images/radcliffe_camera_000002.jpg": photo,
      "oxbuild_images/readme.html": b"<html/>",
    },
  )
  tgz(
    root / "gt_files_170407.tgz",
    {
      "all_souls_1_query.txt": b"oxc1_all_souls_000001 10 20 300 400\n",
      "all_souls_1_good.txt": b"all_souls_000001\n",
      "all_souls_1_ok.txt": b"",
      "all_souls_1_junk.txt": b"radcliffe_camera_000002\n",
    },
  )
  with open(root / "gnd_roxford5k.pkl", "wb") as handle:
    pickle.dump(
      {
        "imlist": ["all_souls_000001", "radcliffe_camera_000002"],
        "qimlist": ["all_souls_000001"],
        "gnd": [{"bbx": [10, 20, 300, 400], "easy": [0], "hard": [], "junk": [1]}],
      },
      handle,
    )
  handler = functools.partial(RangeHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_port}"
  server.shutdown()


def test_official_file_names():
  names = {name: [f.file_name for f in files] for name, files in DATASETS.items()}
  assert names["oxford5k"] == ["oxbuild_images-v1.tgz", "gt_files_170407.tgz"]
  assert names["rparis6k"] == ["paris_1-v1.tgz", "paris_2-v1.tgz", "gnd_rparis6k.pkl"]
  assert DATASETS["roxford5k"][1].url == (
    "https://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl"
  )
  assert all(f.url.startswith("https://") for files in DATASETS.values() for f in files)


def test_download_unpack_and_read_both_layouts(mirror, tmp_path):
  out = tmp_path / "data"
  lines = []
  folder = download_dataset("oxford5k", out, mirror_url=mirror, log=lines.append)
  assert sorted(p.name for p in (folder / "jpg").iterdir()) == [
    "all_souls_000001.jpg",
    "radcliffe_camera_000002.jpg",
  ]
  dataset = read_original_gt(folder / "gt", folder / "jpg")
  assert dataset.qimlist == ["all_souls_000001"] and list(dataset.gnd[0]["junk"]) == [1]
  assert not list((folder / "downloads").glob("*.tgz"))  # Archives removed after unpacking.
  # A second run finds everything done and downloads nothing.
  lines.clear()
  download_dataset("oxford5k", out, mirror_url=mirror, log=lines.append)
  assert all("already unpacked" in line for line in lines)
  # The mirror's stand-in pkl is not the published file: its digest is given instead.
  from delf_ret.datasets.download import sha256_of

  stand_in = sha256_of(tmp_path / "mirror" / "gnd_roxford5k.pkl")
  folder = download_dataset(
    "roxford5k", out, mirror_url=mirror, log=lines.append, sha256={"gnd_roxford5k.pkl": stand_in}
  )
  assert "gnd_roxford5k.pkl: SHA-256 verified" in lines
  dataset = read_revisited_gnd(folder / "gnd_roxford5k.pkl", folder / "jpg")
  assert dataset.image_path(dataset.qimlist[0]).is_file()


def test_partial_download_is_resumed_with_a_range_request(mirror, tmp_path):
  from delf_ret.datasets.download import download_file

  archive = tmp_path / "mirror" / "oxbuild_images-v1.tgz"
  data = archive.read_bytes()
  target = tmp_path / "downloads" / archive.name
  target.parent.mkdir()
  target.with_name(archive.name + ".part").write_bytes(data[: len(data) // 2])
  download_file(f"{mirror}/{archive.name}", target, log=lambda line: None)
  assert target.read_bytes() == data and not target.with_name(archive.name + ".part").exists()
  # A partial file longer than the remote one (416) is dropped and the file fetched again.
  target.unlink()
  target.with_name(archive.name + ".part").write_bytes(data + b"stale tail")
  download_file(f"{mirror}/{archive.name}", target, log=lambda line: None)
  assert target.read_bytes() == data


def test_stale_partial_download_is_dropped_after_a_failed_unpack(mirror, tmp_path):
  downloads = tmp_path / "data" / "oxford5k" / "downloads"
  downloads.mkdir(parents=True)
  (downloads / "oxbuild_images-v1.tgz.part").write_bytes(b"garbage from a killed run")
  quiet = lambda line: None  # noqa: E731
  with pytest.raises(DownloadError, match="archive was deleted, run again"):
    download_dataset("oxford5k", tmp_path / "data", mirror_url=mirror, log=quiet)
  assert not list(downloads.glob("oxbuild_images-v1.tgz*"))
  download_dataset("oxford5k", tmp_path / "data", mirror_url=mirror, log=quiet)
  assert (tmp_path / "data" / "oxford5k" / "jpg" / "all_souls_000001.jpg").is_file()


def test_errors_are_clear(mirror, tmp_path):
  with pytest.raises(DownloadError, match="unknown dataset"):
    download_dataset("holidays", tmp_path)
  with pytest.raises(DownloadError, match="404"):
    download_dataset("paris6k", tmp_path, mirror_url=mirror, log=lambda line: None)
  bad = tmp_path / "bad" / "oxford5k" / "downloads"
  bad.mkdir(parents=True)
  (bad / "oxbuild_images-v1.tgz").write_bytes(b"not a tar file")
  with pytest.raises(DownloadError, match="cannot unpack"):
    download_dataset("oxford5k", tmp_path / "bad", mirror_url=mirror, log=lambda line: None)


@pytest.mark.slow  # Runs the command-line tool in subprocesses.
def test_cli(mirror, tmp_path):
  from delf_ret.datasets.download import sha256_of

  stand_in = sha256_of(tmp_path / "mirror" / "gnd_roxford5k.pkl")
  result = run_cli(
    "delf_ret.cli.download_dataset",
    "--dataset=roxford5k",
    f"--output_dir={tmp_path}",
    f"--mirror_url={mirror}",
    f"--sha256=gnd_roxford5k.pkl={stand_in}",
  )
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").is_file()
  assert "--mirror_url" in run_cli("delf_ret.cli.download_dataset", "--help").stdout

"""Regression tests of the review of issues 25 (page, recognition, batch queries) and 26
(scale-out): each failed before its fix.

- A labels CSV saved by a spreadsheet as "CSV UTF-8" starts with a byte order mark: its
  header was read as an image named '\\ufeffimage' and build_index refused the file.
- Image ids with spaces or non-ASCII letters (``my café 1``, as build_index makes them from
  file names) were unusable on the page: no thumbnail, not queryable, not removable.
- ``make_benchmark --overwrite`` with --output_dir holding the photos (the images folder
  itself, or a folder above it) deleted the photos, leaving a benchmark of dangling links;
  any non-empty folder was replaced.
- Match pictures were drawn into ``scratch/match-<job>-<id>.png`` (an id in a path; a second
  request could read a half-drawn file; scratch grew with every picture).
- A gallery change on the page saved the server's copy of the index over a save made by
  another program meanwhile (build_index), silently undoing it.
"""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

TOKEN = "review-token-0123456789"


def test_a_labels_csv_with_a_byte_order_mark_reads_its_header_as_a_header(tmp_path):
  from delf_ret.index.labels import read_image_labels

  path = tmp_path / "labels.csv"
  text = 'image,label\r\n"my café 1.jpg","Café, ""du"" coin"\r\nStraße b.jpg,street\r\nx.jpg,\r\n'
  path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
  labels = read_image_labels(path)
  assert labels.labels == {"my café 1": 'Café, "du" coin', "Straße b": "street", "x": ""}
  assert labels.rows == {"my café 1": 2, "Straße b": 3, "x": 4}


@pytest.mark.slow
def test_make_benchmark_overwrite_never_deletes_the_photos_or_another_folder(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("sacre_coeur_1", "sacre_coeur_2"):
    shutil.copy(BUNDLED_IMAGES / f"{name}.jpg", photos)
  labels = photos / "labels.csv"
  labels.write_text("image,label\nsacre_coeur_1.jpg,sc\nsacre_coeur_2.jpg,sc\n")
  other = tmp_path / "notes"
  other.mkdir()
  (other / "keep.txt").write_text("mine")
  before = sorted(path.name for path in photos.iterdir())
  for output, message in ((photos, "holds --images_dir"), (other, "is not a benchmark")):
    result = run_command(
      [
        installed_script("make_benchmark"),
        f"--labels_csv={labels}",
        f"--images_dir={photos}",
        f"--output_dir={output}",
        "--overwrite",
      ],
      timeout=120,
      env=tool_env(),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
  assert sorted(path.name for path in photos.iterdir()) == before
  assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
  "text, allowed",
  [
    ("my café 1", True),
    ("Straße b", True),
    ("a.b", True),
    ("东京塔", True),
    ("", False),
    (".", False),
    ("..", False),
    ("a/b", False),
    ("a\\b", False),
    ("a\nb", False),
    ("a\0b", False),
    ("x" * 256, False),
  ],
)
def test_which_request_values_can_name_an_image_id(text, allowed):
  from delf_ret.serve.service import is_image_id

  assert is_image_id(text) is allowed


@pytest.fixture(scope="module")
def unicode_service(tmp_path_factory):
  """A real service (default model, one scale, 160 px) over two photos whose ids have
  spaces and non-ASCII letters."""
  from delf_ret.config import load_config
  from delf_ret.default_model import default_config_path
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.index import IndexParams
  from delf_ret.retrieval.indexing import index_database
  from delf_ret.serve.service import SearchService

  folder = tmp_path_factory.mktemp("review_serve")
  photos = folder / "photos"
  photos.mkdir()
  shutil.copy(BUNDLED_IMAGES / "roofs_1.jpg", photos / "my café 1.jpg")
  shutil.copy(BUNDLED_IMAGES / "roofs_2.jpg", photos / "Straße b.jpg")
  config = load_config(default_config_path(), ["max_image_size=160", "image_scales=1.0"])
  extractor = DelfExtractor(config)
  index_database(
    folder / "index",
    folder / "features",
    IndexParams.from_config(config.retrieval_config),
    images=sorted(photos.iterdir()),
    extract=extractor,
    log=lambda line: None,
  )
  return SearchService(
    config, folder / "index", folder / "features", extractor.extract, (), lambda line: None
  )


@pytest.fixture(scope="module")
def unicode_client(unicode_service, tmp_path_factory):
  from delf_ret.serve.app import create_app

  scratch = tmp_path_factory.mktemp("review_scratch")
  return create_app(unicode_service, TOKEN, 1_000_000, str(scratch)).test_client(), scratch


def wait(client, job_id: str) -> dict:
  for _ in range(600):
    status = client.get(f"/api/jobs/{job_id}").get_json()
    if status["state"] in ("done", "failed"):
      return status
    time.sleep(0.1)
  raise AssertionError(f"job {job_id} did not end")


@pytest.mark.slow
def test_ids_with_spaces_and_accents_are_shown_queried_and_matched(unicode_client):
  client, scratch = unicode_client
  photos = {photo["id"]: photo for photo in client.get("/api/photos").get_json()["photos"]}
  assert photos.keys() == {"my café 1", "Straße b"}
  assert all(photo["has_image"] for photo in photos.values())
  response = client.get("/photo/my%20caf%C3%A9%201?size=thumb")
  assert response.status_code == 200 and response.mimetype == "image/jpeg"
  headers = {"X-Delf-Token": TOKEN}
  job = client.post("/api/query", data={"database_id": "Straße b"}, headers=headers)
  assert job.status_code == 202, job.get_json()
  status = wait(client, job.get_json()["job"])
  assert status["state"] == "done", status
  assert [entry["id"] for entry in status["result"]["results"]] == ["my café 1"]
  url = f"/api/jobs/{status['id']}/match/my%20caf%C3%A9%201.png"
  first, second = client.get(url), client.get(url)
  assert first.status_code == 200 and first.mimetype == "image/png"
  assert second.data == first.data
  assert list(scratch.iterdir()) == []  # Nothing left behind, no id in a file name.


@pytest.mark.slow
def test_an_id_with_spaces_and_accents_can_be_removed(unicode_client, unicode_service):
  client, _ = unicode_client
  headers = {"X-Delf-Token": TOKEN}
  response = client.post("/api/gallery/remove", data={"image_id": "Straße b"}, headers=headers)
  assert response.status_code == 202, response.get_json()
  assert wait(client, response.get_json()["job"])["state"] == "done"
  assert not unicode_service.has_photo("Straße b")


@pytest.mark.slow
def test_a_gallery_change_never_undoes_another_programs_save(unicode_client, unicode_service):
  """build_index (or a second server) saving the index while the page runs: the page's next
  change is refused with one line, instead of saving its stale copy over that change."""
  from delf_ret.index import LocalFeatureIndex

  client, _ = unicode_client
  other = LocalFeatureIndex.load(unicode_service.index_dir)
  other.set_image_record("my café 1", label="relabelled elsewhere")
  other.save(unicode_service.index_dir)
  response = client.post(
    "/api/gallery/remove", data={"image_id": "my café 1"}, headers={"X-Delf-Token": TOKEN}
  )
  status = wait(client, response.get_json()["job"])
  assert status["state"] == "failed"
  assert "changed by another program" in status["error"] and "\n" not in status["error"]
  saved = LocalFeatureIndex.load(unicode_service.index_dir)
  assert "my café 1" in saved and saved.image_label("my café 1") == "relabelled elsewhere"


@pytest.mark.parametrize(
  "host, name",
  [
    ("127.0.0.1:8000", "127.0.0.1"),
    ("LocalHost", "localhost"),
    ("[::1]:8000", "[::1]"),
    ("localhost.evil.example:8000", "localhost.evil.example"),
  ],
)
def test_the_host_name_of_a_host_header(host, name):
  from delf_ret.serve.app import host_name

  assert host_name(host) == name


@pytest.mark.slow
def test_a_local_server_answers_only_to_local_host_names(unicode_client):
  """DNS rebinding: a page at evil.example resolving its name to 127.0.0.1 reaches the
  server with ``Host: evil.example``; it must get neither the page (its token) nor photos."""
  client, _ = unicode_client
  for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io"):
    for url in ("/", "/api/photos", "/photo/my%20caf%C3%A9%201"):
      response = client.get(url, headers={"Host": host})
      assert response.status_code == 403, (host, url)
      assert TOKEN not in response.get_data(as_text=True)
  for host in ("127.0.0.1:8000", "localhost:5000", "[::1]:8000"):
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 200 and TOKEN in page.get_data(as_text=True)


def test_delf_serve_refuses_a_port_over_65535():
  """--port 99999 served on port 34463 (99999 - 65536) without a word."""
  result = run_command(
    [installed_script("delf_serve"), "--port=99999"], timeout=120, env=tool_env()
  )
  assert result.returncode == 1
  assert "--port" in result.stderr and "65535" in result.stderr
  assert "serving" not in result.stdout

"""delf_serve's refusals, through Flask's test client over a real service (default model,
three bundled photos at 256 px), and the console script's host check.

Refused: paths in requests (files are named by image id only), uploads over the size
limit (before they are read) and photos over the pixel limit (before they are decoded),
POSTs without the page's token, corrupt uploads (a message, never a traceback), and, by
the console script, a non-local --host without --allow_remote and a port in use.
"""

from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

TOKEN = "test-token-0123456789"
MAX_UPLOAD = 200_000
MAX_PIXELS = 600_000
PHOTOS = ("roofs_1", "roofs_2", "river_1")
# The module's service loads TensorFlow and extracts three photos (about 15 s on 2 cores).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
  from delf_ret.config import load_config
  from delf_ret.default_model import default_config_path
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.index import IndexParams
  from delf_ret.retrieval.indexing import index_database
  from delf_ret.serve.service import SearchService

  folder = tmp_path_factory.mktemp("serve_unit")
  config = load_config(
    default_config_path(),
    ["max_image_size=256", "image_scales=0.7071,1.0", f"max_image_pixels={MAX_PIXELS}"],
  )
  extractor = DelfExtractor(config)
  index_database(
    folder / "index",
    folder / "features",
    IndexParams.from_config(config.retrieval_config),
    images=[BUNDLED_IMAGES / f"{name}.jpg" for name in PHOTOS],
    extract=extractor,
    log=lambda line: None,
  )
  return SearchService(
    config, folder / "index", folder / "features", extractor.extract, [BUNDLED_IMAGES], print
  )


@pytest.fixture(scope="module")
def client(service, tmp_path_factory):
  from delf_ret.serve.app import create_app

  app = create_app(service, TOKEN, MAX_UPLOAD, str(tmp_path_factory.mktemp("scratch")))
  return app.test_client()


def png_bytes(width: int, height: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


def upload(
  client, url: str, data: bytes, name: str = "photo.jpg", token: str | None = TOKEN, **form
):
  headers = {} if token is None else {"X-Delf-Token": token}
  return client.post(
    url,
    data={"photo": (io.BytesIO(data), name), **form},
    headers=headers,
    content_type="multipart/form-data",
  )


def wait(client, job_id: str) -> dict:
  for _ in range(600):
    status = client.get(f"/api/jobs/{job_id}").get_json()
    if status["state"] in ("done", "failed"):
      return status
    time.sleep(0.1)
  raise AssertionError(f"job {job_id} did not end")


@pytest.mark.parametrize(
  "url",
  [
    "/photo/..%2F..%2Fetc%2Fpasswd",
    "/photo/%2Fetc%2Fpasswd",
    "/photo/../../etc/passwd",
    "/photo/roofs_1%2F..%2F..%2Fsecret",
    "/photo/.hidden",
    "/static/..%2F..%2Fservice.py",
    "/api/jobs/x/match/..%2F..%2Fetc%2Fpasswd.png",
  ],
)
def test_a_path_in_a_request_reaches_no_file(client, url):
  response = client.get(url)
  assert response.status_code == 404
  assert b"root:" not in response.data and b"import" not in response.data


def test_photos_are_served_by_indexed_id_only(client):
  assert client.get("/photo/roofs_1?size=thumb").status_code == 200
  assert client.get("/photo/roofs_1?size=/etc/passwd").status_code == 404
  assert client.get("/photo/leuven_a").status_code == 404  # In the folder, not in the index.
  response = client.post(
    "/api/query", data={"database_id": "../../etc/passwd"}, headers={"X-Delf-Token": TOKEN}
  )
  assert response.status_code == 404


def test_gallery_changes_need_the_page_token(client, service):
  for token in (None, "wrong", ""):
    headers = {} if token is None else {"X-Delf-Token": token}
    response = client.post("/api/gallery/remove", data={"image_id": "roofs_1"}, headers=headers)
    assert response.status_code == 403
    assert "token" in response.get_json()["error"]
    photo = (BUNDLED_IMAGES / "river_2.jpg").read_bytes()
    assert upload(client, "/api/gallery/add", photo, token=token, label="x").status_code == 403
  assert sorted(service.stage.image_ids()) == sorted(PHOTOS)
  page = client.get("/")
  assert TOKEN in page.get_data(as_text=True)  # The page carries it.
  assert page.headers["Content-Security-Policy"].startswith("default-src 'self';")


def test_an_oversize_upload_is_refused_before_it_is_read(client):
  response = upload(client, "/api/query", b"\xff" * (MAX_UPLOAD + 1))
  assert response.status_code == 413
  assert "upload too large" in response.get_json()["error"]


def test_a_photo_over_the_pixel_limit_is_refused(client):
  data = png_bytes(1000, 1000)  # 1 M pixels in a few KB.
  assert len(data) < MAX_UPLOAD
  response = upload(client, "/api/gallery/add", data, name="huge.png", label="big")
  assert response.status_code == 400
  assert response.get_json()["error"].startswith("huge.png: image too large (1000x1000")


@pytest.mark.parametrize(
  "data, reason",
  [
    (b"", "empty"),
    ((BUNDLED_IMAGES / "roofs_1.jpg").read_bytes()[:3000], "corrupt"),
    (b"plain text", "not an image"),
  ],
)
def test_a_bad_upload_gets_a_message_not_a_traceback(client, data, reason):
  response = upload(client, "/api/query", data, name="bad.jpg")
  assert response.status_code == 400
  message = response.get_json()["error"]
  assert reason in message and "Traceback" not in message


def test_a_query_and_a_gallery_photo_round_trip(client, service):
  photo = (BUNDLED_IMAGES / "roofs_2.jpg").read_bytes()
  job = upload(client, "/api/query", photo, name="mine.jpg").get_json()["job"]
  status = wait(client, job)
  assert status["state"] == "done", status
  assert status["result"]["results"][0]["id"] == "roofs_2"
  assert client.get(f"/api/jobs/{job}/match/roofs_1.png").mimetype == "image/png"
  added = upload(client, "/api/gallery/add", photo, name="My photo!.jpg", label="roofs")
  status = wait(client, added.get_json()["job"])
  assert status["result"] == {"added": "My_photo"}
  assert service.stage.image_label("My_photo") == "roofs"
  path = service.image_file("My_photo")
  assert path is not None and path.parent == service.gallery_dir.resolve()
  assert path.read_bytes() == photo
  removed = client.post(
    "/api/gallery/remove", data={"image_id": "My_photo"}, headers={"X-Delf-Token": TOKEN}
  )
  assert wait(client, removed.get_json()["job"])["state"] == "done"
  assert "My_photo" not in service.stage and not path.exists()


def test_a_non_local_host_needs_allow_remote():
  result = run_command(
    [installed_script("delf_serve"), "--host=0.0.0.0", "--port=0"], timeout=120, env=tool_env()
  )
  assert result.returncode == 2
  assert result.stderr.startswith("error: --host 0.0.0.0 would let other machines")
  assert "--allow_remote" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    start = time.monotonic()
    # An index folder that does not exist: were the port checked after the model and the
    # index, this would be their error, not the port's.
    result = run_command(
      [
        installed_script("delf_serve"),
        f"--port={port}",
        f"--index_dir={tmp_path / 'none'}",
        f"--features_dir={tmp_path / 'none'}",
      ],
      timeout=120,
      env=tool_env(),
    )
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
    f"error: port {port} on 127.0.0.1 is in use (another program listens there: stop it, or "
    "give another --port; --port 0 takes a free one)"
  ]
  assert "model:" not in result.stdout and time.monotonic() - start < 60


def test_a_query_box_crops_the_query_and_a_bad_box_is_refused(client, service):
  headers = {"X-Delf-Token": TOKEN}
  whole = {entry.image_id: entry.score for entry in service.query(database_id="roofs_2").ranked}
  job = client.post(
    "/api/query", data={"database_id": "roofs_2", "box": "0.25,0.25,0.75,0.75"}, headers=headers
  ).get_json()["job"]
  status = wait(client, job)
  assert status["state"] == "done", status
  boxed = {entry["id"]: entry["score"] for entry in status["result"]["results"]}
  assert boxed.keys() == whole.keys() and boxed["roofs_1"] != round(whole["roofs_1"], 2)
  assert "roofs_2" not in [entry["id"] for entry in status["result"]["results"]]
  for box in ("0,0,2,1", "0.5,0,0.2,1", "a,b,c,d", "0,0,1"):
    response = client.post(
      "/api/query", data={"database_id": "roofs_2", "box": box}, headers=headers
    )
    assert response.status_code == 400
    assert "query box" in response.get_json()["error"]

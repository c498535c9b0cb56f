"""The Flask application of ``delf_serve``: one page, a JSON API it calls, pictures by image id.

Routes (every image is named by its image id, looked up in the index; no request names a
path on disk):
  GET  /                      the page (templates/index.html; its token in a <meta> tag)
  GET  /api/photos            indexed photos: id, label, whether the page added it
  GET  /photo/<id>?size=N     JPEG of an indexed photo, N = thumb | view
  POST /api/query             photo upload or database id, optional box -> job id
  GET  /api/jobs/<job>        a job's state, stage and, when done, its result
  GET  /api/jobs/<job>/match/<id>.png   the match picture of a result (RANSAC inliers)
  POST /api/gallery/add       photo upload + label -> job id (adds it to the index)
  POST /api/gallery/remove    image id -> job id (deletes it from the index)

A local server answers only requests whose ``Host`` header names 127.0.0.1, localhost or
[::1] (403 otherwise: DNS rebinding). Every POST needs the per-start token (header
``X-Delf-Token``; 403 without it). Uploads over ``max_upload_bytes`` are refused before
they are read (413); photos over the config's ``max_image_pixels`` before they are decoded. Errors are JSON ``{"error": ...}``
for the API and a short page otherwise, never a traceback.
"""

from __future__ import annotations

import collections
import errno
import hmac
import importlib.resources
import logging
import pathlib
import socket
import sys
import tempfile
import threading
import traceback
from typing import Collection

from flask import Flask
from flask import Response
from flask import abort
from flask import jsonify
from flask import render_template
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import LISTEN_QUEUE
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import get_sockaddr
from werkzeug.serving import make_server as werkzeug_server
from werkzeug.serving import select_address_family

from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.retrieval.ranking import is_verified
from delf_ret.serve.jobs import Job
from delf_ret.serve.jobs import JobRunner
from delf_ret.serve.service import RESULTS_SHOWN
from delf_ret.serve.service import THUMBNAIL_SIDE
from delf_ret.serve.service import VIEW_SIDE
from delf_ret.serve.service import Answer
from delf_ret.serve.service import Box
from delf_ret.serve.service import SearchService
from delf_ret.serve.service import check_label
from delf_ret.serve.service import decode_upload
from delf_ret.serve.service import is_image_id

TOKEN_HEADER = "X-Delf-Token"
# The names a local server answers to (``Host`` header without the port).
LOCAL_HOST_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
MATCH_PICTURES_KEPT = 64  # The latest match pictures drawn, kept in memory (PNG bytes).
SIZES = {"thumb": THUMBNAIL_SIDE, "view": VIEW_SIDE}
CONTENT_POLICY = (
  "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
  "frame-ancestors 'none'; form-action 'self'"
)


def create_app(
  service: SearchService,
  token: str,
  max_upload_bytes: int,
  scratch_dir: str | None = None,
  allowed_hosts: Collection[str] | None = LOCAL_HOST_NAMES,
) -> Flask:
  """The application over ``service``; ``token`` guards every POST; uploads are limited to
  ``max_upload_bytes``; uploads and match pictures go to ``scratch_dir`` (default: a new
  temporary folder). Requests whose ``Host`` header names another host than
  ``allowed_hosts`` (None: any) are refused: a web page elsewhere that makes its own name
  resolve to 127.0.0.1 (DNS rebinding) can then neither read the page's token nor the photos."""
  package = importlib.resources.files("delf_ret.serve")
  app = Flask(
    __name__,
    template_folder=str(package / "templates"),
    static_folder=str(package / "static"),
  )
  app.config.update(MAX_CONTENT_LENGTH=max_upload_bytes, DEBUG=False, PROPAGATE_EXCEPTIONS=False)
  scratch = pathlib.Path(scratch_dir or tempfile.mkdtemp(prefix="delf_serve-"))
  runner = JobRunner()
  _guard(app, token, max_upload_bytes, allowed_hosts)

  @app.get("/")
  def page():
    return render_template("index.html", token=token, count=len(service.stage))

  @app.get("/api/photos")
  def photos():
    return jsonify(photos=service.photos())

  @app.get("/photo/<image_id>")
  def photo(image_id: str):
    side = SIZES.get(request.args.get("size", "thumb"))
    data = service.picture(image_id, side) if side and is_image_id(image_id) else None
    if data is None:
      abort(404, "no such photo")
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "no-cache"})

  _query_routes(app, service, runner, scratch)
  _gallery_routes(app, service, runner, scratch)
  return app


def _guard(
  app: Flask, token: str, max_upload_bytes: int, allowed_hosts: Collection[str] | None
) -> None:
  """The Host check of every request, the token check of every POST and the error pages (one
  line, never a traceback)."""

  @app.before_request
  def check_host():
    if allowed_hosts is not None and host_name(request.host) not in allowed_hosts:
      abort(403, "this server answers only at the address it printed (127.0.0.1 or localhost)")

  @app.before_request
  def check_token():
    if request.method == "POST":
      given = request.headers.get(TOKEN_HEADER, "")
      if not hmac.compare_digest(given.encode(), token.encode()):
        abort(403, "missing or wrong page token: reload the page")

  @app.after_request
  def headers(response: Response) -> Response:
    # Only the page's own files run or load (uploads are previewed as blob: URLs).
    response.headers["Content-Security-Policy"] = CONTENT_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

  @app.errorhandler(HTTPException)
  def http_error(error: HTTPException):
    message = error.description or error.name
    if error.code == 413:
      message = f"upload too large (limit {max_upload_bytes / 2**20:.0f} MB)"
    return _error(message, error.code or 500)

  @app.errorhandler(DelfRetError)
  def input_error(error: DelfRetError):
    return _error(str(error), 400)

  @app.errorhandler(Exception)
  def internal_error(error: Exception):
    traceback.print_exception(error, file=sys.stderr)
    return _error("internal error (see the server's log)", 500)


def _query_routes(
  app: Flask, service: SearchService, runner: JobRunner, scratch: pathlib.Path
) -> None:
  """POST /api/query, GET /api/jobs/<job> and the match pictures of a query's results."""
  pictures: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
  pictures_lock = threading.Lock()

  @app.post("/api/query")
  def query():
    box = Box.parse(request.form["box"]) if request.form.get("box") else None
    database_id = request.form.get("database_id")
    if database_id:
      if service.image_file(database_id) is None:
        abort(404, "no such photo")
      image = None
    else:
      image = _uploaded_image(service, scratch)[1]

    def work(job: Job) -> Answer:
      return service.query(image, database_id or None, box, job.progress)

    return jsonify(job=runner.submit("query", work).job_id), 202

  @app.get("/api/jobs/<job_id>")
  def job_status(job_id: str):
    job = runner.get(job_id)
    if job is None:
      abort(404, "no such job (the server keeps the latest ones)")
    status = job.status()
    if job.state == "done":
      status["result"] = _render(service, job) if job.kind == "query" else job.result
    return jsonify(status)

  @app.get("/api/jobs/<job_id>/match/<image_id>.png")
  def match(job_id: str, image_id: str):
    job = runner.get(job_id)
    if job is None or job.kind != "query" or job.state != "done" or not is_image_id(image_id):
      abort(404, "no such result")
    key = (job.job_id, image_id)
    with pictures_lock:
      data = pictures.get(key)
    if data is None:
      # Drawn into a file of a fresh name (no id in it), read back and kept in memory: two
      # requests for one picture never read a half-drawn file, and scratch does not grow.
      with tempfile.TemporaryDirectory(dir=scratch) as folder:
        target = pathlib.Path(folder) / "match.png"
        service.match_picture(job.result, image_id, target)
        data = target.read_bytes()
      with pictures_lock:
        pictures[key] = data
        while len(pictures) > MATCH_PICTURES_KEPT:
          pictures.popitem(last=False)
    return Response(data, mimetype="image/png")


def _gallery_routes(
  app: Flask, service: SearchService, runner: JobRunner, scratch: pathlib.Path
) -> None:
  """POST /api/gallery/add and /api/gallery/remove (jobs: they change the index)."""

  @app.post("/api/gallery/add")
  def gallery_add():
    data, image, name = _uploaded_image(service, scratch)
    label = check_label(request.form.get("label"))

    def work(job: Job) -> dict:
      job.progress("extracting features", 0.2)
      return {"added": service.add_photo(data, image, name, label)}

    return jsonify(job=runner.submit("add", work).job_id), 202

  @app.post("/api/gallery/remove")
  def gallery_remove():
    image_id = request.form.get("image_id", "")
    if not service.has_photo(image_id):
      abort(404, "no such photo")

    def work(job: Job) -> dict:
      service.remove_photo(image_id)
      return {"removed": image_id}

    return jsonify(job=runner.submit("remove", work).job_id), 202


def host_name(host: str) -> str:
  """The name of a ``Host`` header without its port, lower case: ``[::1]:8000`` -> ``[::1]``."""
  host = host.strip().lower()
  if host.startswith("["):
    return host[: host.find("]") + 1]
  return host.partition(":")[0]


def listen(host: str, port: int) -> socket.socket:
  """A TCP socket bound to ``host``:``port`` (0: a free port) and listening, bound as
  Werkzeug's server binds one; delf_serve opens it before the model loads. Raises InputError
  (one line) when the port is in use or the address cannot be listened on."""
  family = select_address_family(host, port)
  listening = socket.socket(family, socket.SOCK_STREAM)
  try:
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As Werkzeug's server.
    listening.bind(get_sockaddr(host, port, family))
    listening.listen(LISTEN_QUEUE)
  except OSError as error:
    listening.close()
    if error.errno == errno.EADDRINUSE:
      raise InputError(
        f"port {port} on {host} is in use (another program listens there: stop it, or give "
        "another --port; --port 0 takes a free one)"
      ) from None
    raise InputError(
      f"cannot listen on port {port} of {host} ({error.strerror or error})"
    ) from None
  return listening


def make_server(
  host: str, port: int, app: Flask, listening: socket.socket | None = None
) -> BaseWSGIServer:
  """A threaded server of ``app`` on ``host``:``port`` (0: a free port, see its ``port``):
  each request in its own thread, so pages answer while a query runs. Requests are not
  logged one line each (the page polls its jobs several times a second); errors are.

  listening: a socket from ``listen(host, port)`` to serve on (the server uses a duplicate;
  the caller closes it); None: the server binds itself (a port in use: Werkzeug's message
  and exit status 1).
  """
  logging.getLogger("werkzeug").setLevel(logging.WARNING)
  fd = None if listening is None else listening.fileno()
  return werkzeug_server(host, port, app, threaded=True, fd=fd)


def _error(message: str, code: int):
  if request.path.startswith("/api/"):
    return jsonify(error=message), code
  return Response(f"{code}: {message}\n", status=code, mimetype="text/plain")


def _uploaded_image(service: SearchService, scratch: pathlib.Path):
  """(bytes, RGB image, file name) of the request's ``photo`` upload; 400 for a bad one."""
  upload = request.files.get("photo")
  if upload is None or not upload.filename:
    abort(400, "choose a photo to upload")
  data = upload.read()
  if not data:
    abort(400, f"{upload.filename}: file is empty")
  name = pathlib.Path(upload.filename).name
  return data, decode_upload(data, name, service.config.max_image_pixels, scratch), name


def _render(service: SearchService, job: Job) -> dict:
  """A query's answer as the page shows it: results, recognition, seconds per stage."""
  answer: Answer = job.result
  retrieval = service.config.retrieval_config
  results = []
  for rank, entry in enumerate(answer.ranked[:RESULTS_SHOWN], 1):
    results.append(
      {
        "rank": rank,
        "id": entry.image_id,
        "score": round(entry.score, 2),
        "inliers": entry.inliers,
        "verified": is_verified(entry, retrieval),
        "label": service.label(entry.image_id),
      }
    )
  recognition = answer.recognition
  return {
    "num_features": answer.features.num_features,
    "results": results,
    "recognition": {
      "label": recognition.label,
      "score": round(float(recognition.score), 2),
      "votes": {label: round(float(votes), 2) for label, votes in recognition.votes.items()},
    },
    "min_inliers": retrieval.min_inliers,
    "seconds": {stage: round(value, 3) for stage, value in answer.seconds.items()},
  }

r"""A local web page to search an index by photo and see why each result matched.

Usage:
  delf_serve                                   # the bundled demo photos (indexed once)
  delf_serve --index_dir index/ --features_dir features/ [--images_dir photos/] \
      [--config_path my.pbtxt] [--port 8000]

Open the printed address in a browser: upload a photo or pick an indexed one, draw a query
box, see the ranked results (first-stage score, RANSAC inliers, verified, label), the match
picture of any result and the recognised label; add labelled photos to the gallery and
remove them. The model and every database image's features stay in memory, so a query
is extraction, search and reranking only.

The index may be of any first stage (retrieval_config.first_stage: votes, asmk, global; the
config must ask for the one it was built with). Images are found through the index's
records (build_index records each image's path);
--images_dir names folders for indexes without them. Without --index_dir, the bundled
demo photos are indexed into --cache_dir on the first start and reused afterwards.

Safety: the server listens on 127.0.0.1 only; another --host needs --allow_remote (anyone
who can reach it can search and change the gallery). Uploads over --max_upload_mb and
photos over the config's max_image_pixels are refused; files are served by image id
only; gallery changes need the page's per-start token. A --port in use is refused in one
line (exit status 2) before the model loads.
"""

from __future__ import annotations

import pathlib
import secrets
import signal
import tempfile
from typing import TYPE_CHECKING

from absl import flags

from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import run_tool
from delf_ret.errors import InputError
from delf_ret.retrieval.first_stage import query_extractor

if TYPE_CHECKING:
  from delf_ret.config import DelfConfig
  from delf_ret.serve.service import SearchService

FLAGS = flags.FLAGS
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (another needs --allow_remote).")
flags.DEFINE_integer(
  "port", 8000, "Port to listen on (0: any free port).", lower_bound=0, upper_bound=65535
)
flags.DEFINE_boolean(
  "allow_remote", False, "Allow a --host other than 127.0.0.1 / localhost / ::1."
)
flags.DEFINE_string("index_dir", None, "Index folder (build_index). Default: the demo photos.")
flags.DEFINE_string("features_dir", None, "Feature files of the indexed images (with --index_dir).")
flags.DEFINE_multi_string(
  "images_dir", [], "Folder of indexed images, for ids the index has no path for (repeatable)."
)
flags.DEFINE_string(
  "cache_dir", None, "Where the demo photos are indexed (default: ~/.cache/delf_ret/serve)."
)
flags.DEFINE_float(
  "max_upload_mb", 32.0, "Largest upload accepted, in MiB (a positive number).", lower_bound=0.01
)
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
define_backend_flag()
define_progress_flag()


def _check_host() -> None:
  if FLAGS.host in LOCAL_HOSTS:
    return
  if not FLAGS.allow_remote:
    raise InputError(
      f"--host {FLAGS.host} would let other machines use the page (search, change the "
      "gallery); give --allow_remote as well if that is meant"
    )
  log(f"WARNING: listening on {FLAGS.host}: anyone who can reach this port can use the page")


def main(argv: list[str]) -> int:
  del argv
  _check_host()
  if bool(FLAGS.index_dir) != bool(FLAGS.features_dir):
    raise InputError("--index_dir and --features_dir go together")
  # Lazy: Flask and matplotlib (the app, its service), imported once the flags are checked.
  try:
    from delf_ret.serve.app import LOCAL_HOST_NAMES
    from delf_ret.serve.app import create_app
    from delf_ret.serve.app import listen
    from delf_ret.serve.app import make_server
  except ModuleNotFoundError as error:
    if error.name not in ("flask", "werkzeug"):
      raise
    raise InputError("delf_serve needs Flask: pip install 'delf-ret[serve]'") from None

  config = load_config_from_flags()
  # The port first: one in use is refused at once, before the model loads (and the demo
  # photos are indexed).
  listening = listen(FLAGS.host, FLAGS.port)
  # Uploads being decoded and match pictures being drawn; removed when the server stops.
  with listening, tempfile.TemporaryDirectory(prefix="delf_serve-") as scratch:
    service, index_dir = _service(config)
    token, limit = secrets.token_urlsafe(32), int(FLAGS.max_upload_mb * 2**20)
    # A local server answers only to local names; one open to others to any name.
    hosts = None if FLAGS.host not in LOCAL_HOSTS else LOCAL_HOST_NAMES
    app = create_app(service, token, limit, scratch, hosts)
    server = make_server(FLAGS.host, FLAGS.port, app, listening)
    host = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
    # Werkzeug's serve_forever returns quietly on KeyboardInterrupt: Ctrl-C and SIGTERM raise
    # _Stopped instead, so that both print one line and exit 128 + the signal's number.
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.getsignal(number) for number in stops}
    for number in stops:
      if previous[number] != signal.SIG_IGN:  # A shell's background job ignores SIGINT.
        signal.signal(number, _stop)
    try:
      log(f"{len(service.stage)} photos indexed ({index_dir})")
      log(f"serving http://{host}:{server.port}/ (Ctrl-C stops)")
      server.serve_forever()
    except _Stopped as stopped:
      log(f"stopped ({stopped.name})")
      return 128 + stopped.number
    finally:
      for number in stops:
        signal.signal(number, previous[number])
      server.server_close()
  return 0


def _service(config: DelfConfig) -> tuple[SearchService, str | pathlib.Path]:
  """(the search service of --index_dir, or of the demo photos indexed into the cache; its
  index folder): loads the model and every database image's features."""
  # Lazy: the demo (its index, TensorFlow's extraction) and the service, as in main.
  from delf_ret.serve.demo import default_cache_dir
  from delf_ret.serve.demo import demo_photos_dir
  from delf_ret.serve.demo import prepare_demo_index
  from delf_ret.serve.service import SearchService

  log(f"model: {config.model_path}")
  # What the configured first stage needs of a query (local features; global: and its
  # global descriptor); the service refuses an index of another stage.
  extract = query_extractor(config, FLAGS.backend)
  extract.load()
  index_dir, features_dir, images = FLAGS.index_dir, FLAGS.features_dir, FLAGS.images_dir
  if not index_dir:
    cache = FLAGS.cache_dir or default_cache_dir()
    index_dir, features_dir = prepare_demo_index(cache, config, extract.delf_extractor, log)
    images = [*images, demo_photos_dir()]
  return SearchService(config, index_dir, features_dir, extract, images, log), index_dir


class _Stopped(Exception):
  """Ctrl-C or SIGTERM (a service manager, ``kill``) while serving."""

  def __init__(self, number: int):
    super().__init__(number)
    self.number = number
    self.name = "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name


def _stop(number: int, frame: object) -> None:
  raise _Stopped(number)


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

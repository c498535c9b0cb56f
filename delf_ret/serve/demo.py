"""The bundled demo photos as a served collection: indexed once into a cache folder, reused.

``delf_serve`` with no index serves the photos of ``delf_ret/demo_data`` (labels from its
``labels.csv``). The first start extracts them and builds the index into
``<cache>/demo-<digest>/`` (``features/``, ``index/``), where the digest covers the
config and the photos, so other settings or photos get a folder of their own; the
index (of the configured first stage) records each photo's path and label. Later starts
find the finished index (its ``READY`` file) and load it; an interrupted first start
resumes (index_first_stage).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib
from typing import Callable

from delf_ret.atomic import write_bytes_atomic
from delf_ret.config import DelfConfig
from delf_ret.config import to_text
from delf_ret.datasets.labelled import read_labels
from delf_ret.index.labels import read_image_labels
from delf_ret.retrieval.demo import bundled_demo_data
from delf_ret.retrieval.demo import data_digest
from delf_ret.retrieval.indexing import Extract
from delf_ret.retrieval.indexing import index_first_stage

READY = "READY"  # Written into the demo's folder once its index holds every photo's record.


def demo_photos_dir() -> pathlib.Path:
  """The folder of the bundled demo photos (delf_ret/demo_data)."""
  return pathlib.Path(str(importlib.resources.files("delf_ret") / "demo_data"))


def default_cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/delf_ret/serve, else ~/.cache/delf_ret/serve."""
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "delf_ret" / "serve"


def demo_folder(cache_dir: str | os.PathLike, config: DelfConfig) -> pathlib.Path:
  """``<cache_dir>/demo-<digest>``: the digest (12 hex) of the config and the demo photos."""
  digest = hashlib.sha256(to_text(config).encode())
  digest.update(data_digest(bundled_demo_data(demo_photos_dir())).encode())
  return pathlib.Path(cache_dir) / f"demo-{digest.hexdigest()[:12]}"


def prepare_demo_index(
  cache_dir: str | os.PathLike,
  config: DelfConfig,
  extract: Callable[[], Extract],
  log: Callable[[str], None] = print,
) -> tuple[pathlib.Path, pathlib.Path]:
  """(index folder, features folder) of the demo photos, indexed on first use (see the module
  docstring). ``extract`` makes the extractor, called only when photos must be extracted."""
  folder = demo_folder(cache_dir, config)
  index_dir, features_dir = folder / "index", folder / "features"
  if (folder / READY).is_file():
    log(f"demo photos: index at {index_dir} (made earlier)")
    return index_dir, features_dir
  log(f"demo photos: indexing the bundled photos into {folder} (once; later starts reuse it)")
  labels_csv = demo_photos_dir() / "labels.csv"
  # The configured first stage, each photo's path and label recorded (index_first_stage).
  index_first_stage(
    index_dir,
    features_dir,
    config,
    images=[path.resolve() for path, _ in read_labels(labels_csv)],
    extract=extract(),
    log=log,
    labels=read_image_labels(labels_csv),
  )
  write_bytes_atomic(folder / READY, b"index of the bundled demo photos, with their records\n")
  return index_dir, features_dir

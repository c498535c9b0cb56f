"""Shared fixtures: real photos from ../shared/data, a random-weight DELF model, small configs."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("DELF_RET_SHARED_DATA", REPO.parent / "shared" / "data"))
BUNDLED_IMAGES = REPO / "delf_ret" / "demo_data"

# Two scales and 256 px keep each extraction well under a second on 2 cores.
SMALL_CONFIG = """
model_path: "{model_path}"
image_scales: [0.5, 1.0]
delf_local_config {{
  use_pca: {use_pca}
  max_feature_num: {max_feature_num}
  score_threshold: 0.0
  pca_parameters {{
    mean_path: "{pca_dir}/pca_mean.npy"
    projection_matrix_path: "{pca_dir}/pca_projection.npy"
    pca_variances_path: "{pca_dir}/pca_variances.npy"
    pca_dim: 40
    use_whitening: {use_whitening}
  }}
}}
max_image_size: 256
"""


def landmark_images() -> list[pathlib.Path]:
  folder = SHARED_DATA / "landmarks"
  if not folder.is_dir():
    pytest.skip(f"shared data not found at {folder} (set DELF_RET_SHARED_DATA)")
  return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data not found at {SHARED_DATA} (set DELF_RET_SHARED_DATA)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def delf_model():
  from delf_ret.model import DelfModel

  return DelfModel(num_classes=3, seed=0)


@pytest.fixture(scope="session")
def model_path(delf_model, tmp_path_factory) -> pathlib.Path:
  from delf_ret.model import save_delf_model

  path = tmp_path_factory.mktemp("model") / "delf_random.keras"
  save_delf_model(delf_model, path)
  return path


@pytest.fixture(scope="session")
def pca_dir(delf_model, model_path, tmp_path_factory) -> pathlib.Path:
  """PCA learned from the raw features of four real landmark photos."""
  from delf_ret.config import parse_config_text
  from delf_ret.extract.pca_training import learn_pca_from_images

  folder = tmp_path_factory.mktemp("pca")
  config = parse_config_text(make_config_text(model_path, folder, use_pca=False))
  learned = learn_pca_from_images(
    config, landmark_images()[:4], folder, model=delf_model, log=lambda line: None
  )
  assert not learned.failures
  return folder


def make_config_text(
  model_path, pca_dir, use_pca=True, max_feature_num=1000, use_whitening=False
) -> str:
  return SMALL_CONFIG.format(
    model_path=model_path,
    pca_dir=pca_dir,
    use_pca=str(use_pca).lower(),
    max_feature_num=max_feature_num,
    use_whitening=str(use_whitening).lower(),
  )


@pytest.fixture(scope="session")
def config_path(model_path, pca_dir, tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("config") / "small.pbtxt"
  path.write_text(make_config_text(model_path, pca_dir))
  return path


def random_unit_descriptors(rng, n: int, dim: int):
  """float32 [n, dim] Gaussian rows scaled to unit L2 norm."""
  import numpy as np

  descriptors = rng.normal(size=(n, dim)).astype(np.float32)
  return descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)


def make_features(points_yx, descriptors):
  """LocalFeatures with the given (y, x) points [N, 2] and descriptors [N, D]; unit scale/score."""
  import numpy as np

  from delf_ret.features import LocalFeatures

  n = len(points_yx)
  return LocalFeatures(points_yx, np.ones(n), descriptors, np.ones(n), np.zeros(n))


def installed_script(name: str) -> str:
  """Path of an installed console script (beside this Python first); fails the test if missing."""
  import shutil

  found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
  assert found, f"console script {name} is not installed"
  return found


def tgz(path: pathlib.Path, files: dict[str, bytes]) -> None:
  """A .tgz with ``files`` {member path: bytes}."""
  import io
  import tarfile

  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def tool_env(**extra: str) -> dict[str, str]:
  """This environment with TensorFlow's C++ logs quiet and the checkout first on PYTHONPATH."""
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)


def run_command(args, *, timeout: float | None, env=None, cwd=None) -> subprocess.CompletedProcess:
  """Runs ``args`` with no stdin and returns the completed process (text output captured).

  ``timeout`` is required (None: no limit) so that each test states how long a run may take.
  """
  return subprocess.run(
    args,
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    stdin=subprocess.DEVNULL,
    timeout=timeout,
  )


def run_cli(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs ``python -m module args`` from the checkout and returns the completed process."""
  return run_command(
    [sys.executable, "-m", module, *args], timeout=timeout, env=tool_env(), cwd=REPO
  )


def kill_after_checkpoint(
  command, checkpoint: pathlib.Path, *, env, timeout: float = 600, linger: float = 0.0
) -> None:
  """Starts ``command`` in its own session and SIGKILLs its whole process group ``linger``
  seconds after ``checkpoint`` appears; fails if the command ends or ``timeout`` passes first."""
  process = subprocess.Popen(
    command,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
    env=env,
    start_new_session=True,
  )
  deadline = time.time() + timeout
  while not checkpoint.exists():
    assert process.poll() is None and time.time() < deadline, "no checkpoint was written"
    time.sleep(0.5)
  time.sleep(linger)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()


def write_gldv2_layout(
  root: pathlib.Path, shared_data: pathlib.Path, corrupt: bool = False
) -> dict:
  """A tiny GLDv2-layout copy of the shared landmark photos (landmark names -> ids 10, 20, ...).

  Returns paths ("csv", "train"), "landmark_of" (image id -> landmark id) and,
  with ``corrupt``, the id of one extra unreadable image ("corrupt_id").
  """
  import shutil
  import zlib

  from delf_ret.datasets.labelled import read_labels

  rows = [(path, name) for path, name in read_labels(shared_data / "labels.csv") if name]
  names = sorted({name for _, name in rows})
  images: dict[int, list[str]] = {}
  landmark_of = {}
  train = root / "train"
  for number, (path, name) in enumerate(rows):
    relative = path.relative_to(shared_data).as_posix()
    image_id = f"{number:04x}{zlib.crc32(relative.encode()):012x}"
    landmark = 10 * (names.index(name) + 1)
    target = train / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    images.setdefault(landmark, []).append(image_id)
    landmark_of[image_id] = landmark
  layout = {"csv": root / "train_clean.csv", "train": train, "landmark_of": landmark_of}
  if corrupt:
    bad = "ffff000000000000"
    target = train / "f" / "f" / "f" / f"{bad}.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\xff\xd8 truncated jpeg")
    images[10].append(bad)
    landmark_of[bad] = 10
    layout["corrupt_id"] = bad
  with open(layout["csv"], "w") as handle:
    handle.write("landmark_id,images\n")
    for landmark, ids in images.items():
      handle.write(f"{landmark},{' '.join(ids)}\n")
  return layout


# Smaller images and a shallower reranking keep the demo short; the pipeline is the same.
FAST_DEMO = [
  "--config_override=max_image_size=320",
  "--config_override=retrieval_config.rerank_top_n=4",
  "--config_override=retrieval_config.ransac_max_trials=200",
]


def demo_environment(**extra: str) -> dict[str, str]:
  """A user's environment: no DELF_RET_SHARED_DATA, so the demo looks at ../shared/data."""
  env = {key: value for key, value in os.environ.items() if key != "DELF_RET_SHARED_DATA"}
  return dict(env, TF_CPP_MIN_LOG_LEVEL="2", **extra)


@pytest.fixture(scope="session")
def bundled_demo_run(tmp_path_factory):
  """One delf_demo run (FAST_DEMO) on the bundled photos, shared by the tests that need a
  first run: (the folder it ran in, holding demo_output/; the completed process). Its
  parent has no shared/data, so the demo falls back to the bundled photos. Tests that run
  the demo again work on their own copy (copy_demo_folder), never in this folder."""
  folder = tmp_path_factory.mktemp("bundled_demo") / "clone"
  folder.mkdir()
  result = run_command(
    [installed_script("delf_demo"), *FAST_DEMO], timeout=900, env=demo_environment(), cwd=folder
  )
  return folder, result


def copy_demo_folder(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  """``source`` (a folder holding demo_output/) copied to ``target``, symlinks as they are."""
  import shutil

  shutil.copytree(source, target, symlinks=True)
  return target

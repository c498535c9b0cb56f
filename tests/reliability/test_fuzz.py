"""Bounded, seeded fuzzing of the readers of untrusted files: every mutation gives a result or
the package's own error (DelfRetError), never another exception or a crash."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.errors import DelfRetError
from delf_ret.evaluation.ground_truth import read_revisited_gnd
from delf_ret.features import read_datum
from delf_ret.features import read_features
from delf_ret.features import write_datum
from delf_ret.features import write_features
from delf_ret.images import load_image

MUTATIONS = 300


def mutations(data: bytes, seed: int, count: int = MUTATIONS):
  """Seeded byte flips, overwrites, truncations, insertions and duplications of ``data``."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    mutated = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:  # Flip a few bits.
      for position in rng.integers(0, len(mutated), rng.integers(1, 8)):
        mutated[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # Overwrite a run with random bytes.
      start = int(rng.integers(0, len(mutated)))
      length = int(rng.integers(1, 16))
      mutated[start : start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == 2:  # Truncate.
      mutated = mutated[: int(rng.integers(0, len(mutated)))]
    elif kind == 3:  # Insert random bytes.
      start = int(rng.integers(0, len(mutated)))
      mutated[start:start] = rng.integers(
        0, 256, int(rng.integers(1, 32)), dtype=np.uint8
      ).tobytes()
    else:  # Set a run to 0xff (huge lengths and counts).
      start = int(rng.integers(0, len(mutated)))
      mutated[start : start + int(rng.integers(1, 9))] = b"\xff" * 8
    yield bytes(mutated)


def test_fuzzed_feature_files(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "a.delf"
  write_features(
    path, make_features(rng.uniform(0, 500, (40, 2)), random_unit_descriptors(rng, 40, 40))
  )
  original = path.read_bytes()
  outcomes = {"read": 0, "refused": 0}
  for number, data in enumerate(mutations(original, seed=1)):
    path.write_bytes(data)
    try:
      features = read_features(path)
    except DelfRetError:
      outcomes["refused"] += 1
      continue
    assert features.locations.shape[0] == features.descriptors.shape[0], number
    outcomes["read"] += 1
  assert outcomes["refused"] > 0 and sum(outcomes.values()) == MUTATIONS


def _revisited_gnd() -> dict:
  """A small Revisited ground truth with numpy arrays (int64, int32, float64) and scalars."""
  return {
    "imlist": [f"image_{i:03d}" for i in range(12)],
    "qimlist": ["query_a", "query_b"],
    "gnd": [
      {
        "bbx": np.array([1.5, 2.0, 300.0, 400.25]),
        "easy": np.array([0, 3, 5]),
        "hard": np.array([7], np.int32),
        "junk": [np.int64(11)],
      },
      {"bbx": [0.0, 0.0, 10.0, 10.0], "easy": np.arange(4, 9), "hard": [], "junk": np.zeros(0)},
    ],
  }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_fuzzed_ground_truth_pickles(tmp_path, protocol):
  """numpy's reconstruct path (protocols 2 and 4) and _frombuffer (5), every mutation read
  or refused; what is read keeps its promises."""
  path = tmp_path / "gnd_fuzz.pkl"
  original = pickle.dumps(_revisited_gnd(), protocol=protocol)
  path.write_bytes(original)
  assert read_revisited_gnd(path).gnd[0]["easy"].tolist() == [0, 3, 5]
  refused = 0
  for number, data in enumerate(mutations(original, seed=30 + protocol)):
    path.write_bytes(data)
    try:
      dataset = read_revisited_gnd(path)
    except DelfRetError as error:
      assert "\n" not in str(error), number
      refused += 1
      continue
    assert len(dataset.gnd) == len(dataset.qimlist), number
    for entry in dataset.gnd:
      assert entry["bbx"].size in (0, 4) and np.all(np.isfinite(entry["bbx"])), number
      for kind in ("easy", "hard", "junk"):
        ids = entry[kind]
        assert ids.dtype == np.int64 and ids.ndim == 1 and ids.flags.owndata, number
        assert ids.size == 0 or (0 <= ids.min() and ids.max() < len(dataset.imlist)), number
  assert refused > 0


def test_fuzzed_ground_truth_mat_files(tmp_path):
  """The official gnd_<dataset>.mat layout, compressed (MATLAB 7) and not (MATLAB 5)."""
  import scipy.io

  content = _revisited_gnd()
  names = {key: np.empty((1, len(content[key])), object) for key in ("imlist", "qimlist")}
  for key in names:
    names[key][0, :] = content[key]
  gnd = np.zeros((1, 2), dtype=[(k, object) for k in ("bbx", "easy", "hard", "junk")])
  for i, entry in enumerate(content["gnd"]):
    for key, value in entry.items():
      gnd[0, i][key] = np.asarray(value, np.float64).reshape(1, -1) + (key != "bbx")
  path = tmp_path / "gnd_fuzz.mat"
  for seed, compress in ((50, True), (51, False)):
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {**names, "gnd": gnd}, do_compression=compress)
    path.write_bytes(buffer.getvalue())
    assert read_revisited_gnd(path).gnd[0]["easy"].tolist() == [0, 3, 5]
    refused = 0
    for number, data in enumerate(mutations(buffer.getvalue(), seed=seed)):
      path.write_bytes(data)
      try:
        dataset = read_revisited_gnd(path)
      except DelfRetError as error:
        assert "\n" not in str(error), number
        refused += 1
        continue
      assert len(dataset.gnd) == len(dataset.qimlist), (compress, number)
    assert refused > 0


def test_fuzzed_datum_files(tmp_path):
  rng = np.random.default_rng(4)
  path = tmp_path / "projection.datum"
  write_datum(path, rng.normal(size=(6, 5)))
  original = path.read_bytes()
  refused = 0
  for number, data in enumerate(mutations(original, seed=40)):
    path.write_bytes(data)
    try:
      array = read_datum(path)
    except DelfRetError:
      refused += 1
      continue
    assert array.dtype == np.float32 and np.all(np.isfinite(array)), number
  assert refused > 0


def test_fuzzed_images(tmp_path, shared_data):
  with Image.open(shared_data / "pairs" / "box.png") as image:
    small = image.convert("RGB").resize((64, 48))
  originals = {}
  for fmt in ("PNG", "JPEG"):
    buffer = io.BytesIO()
    small.save(buffer, format=fmt)
    originals[fmt] = buffer.getvalue()
  for seed, (fmt, data) in enumerate(originals.items()):
    path = tmp_path / f"image.{fmt.lower()}"
    for number, mutated in enumerate(mutations(data, seed=10 + seed, count=MUTATIONS // 2)):
      path.write_bytes(mutated)
      try:
        image = load_image(path, max_pixels=10_000_000)
      except DelfRetError:
        continue
      assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (fmt, number)


@pytest.mark.slow  # Builds and loads many damaged indexes (20 s).
def test_fuzzed_index_files(tmp_path):
  from delf_ret.index import LocalFeatureIndex

  rng = np.random.default_rng(2)
  index = LocalFeatureIndex(8)
  for name in ("a", "b", "c"):
    index.add(name, random_unit_descriptors(rng, 20, 8))
  index.save(tmp_path / "index")
  saved = sorted(p for p in (tmp_path / "index").rglob("*") if p.is_file())
  targets = [p for p in saved if p.name != "CURRENT"] + [p for p in saved if p.name == "CURRENT"]
  assert targets
  per_file = max(1, MUTATIONS // len(targets))
  for seed, target in enumerate(targets):
    original = target.read_bytes()
    for number, data in enumerate(mutations(original, seed=20 + seed, count=per_file)):
      target.write_bytes(data)
      try:
        loaded = LocalFeatureIndex.load(tmp_path / "index")
      except DelfRetError:
        continue
      assert loaded.dim == 8, (target.name, number)
    target.write_bytes(original)
  assert len(LocalFeatureIndex.load(tmp_path / "index")) == 3

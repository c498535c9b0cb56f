"""Compact float16 weights (the shipped default model's format)."""

import numpy as np
import pytest

from delf_ret.model import load_delf_model
from delf_ret.model.compact import CompactWeightsError
from delf_ret.model.compact import read_compact_weights
from delf_ret.model.compact import save_compact_weights
from delf_ret.model.compact import weights_digest


@pytest.mark.slow  # Builds DELF models (7-14 s).
def test_round_trip_keeps_the_outputs_to_float16_precision(delf_model, tmp_path):
  path = tmp_path / "weights.npz"
  save_compact_weights(delf_model, path)
  loaded = load_delf_model(path)  # dispatched on the .npz suffix
  assert loaded.num_classes == delf_model.num_classes
  with np.load(path) as data:
    kernels = [name for name in data.files if data[name].dtype == np.float16]
    statistics = [name for name in data.files if "moving_variance" in name]
    assert kernels and statistics
    assert all(data[name].dtype == np.float32 for name in statistics)
  images = np.random.default_rng(0).uniform(0, 255, (1, 96, 64, 3)).astype(np.float32)
  before, after = delf_model(images), loaded(images)
  scale = float(np.abs(before["features"]).max())
  np.testing.assert_allclose(after["features"], before["features"], atol=0.02 * scale)
  np.testing.assert_allclose(after["attention"], before["attention"], rtol=0.05, atol=0.02)


@pytest.mark.slow  # Builds DELF models (7-14 s).
def test_damaged_or_foreign_files_give_the_package_error(delf_model, tmp_path):
  with pytest.raises(CompactWeightsError, match="not found"):
    read_compact_weights(tmp_path / "missing.npz")
  broken = tmp_path / "broken.npz"
  broken.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(CompactWeightsError, match="not a readable"):
    load_delf_model(broken)
  foreign = tmp_path / "foreign.npz"
  np.savez(foreign, a=np.zeros(3))
  with pytest.raises(CompactWeightsError, match="format version"):
    load_delf_model(foreign)
  good = tmp_path / "good.npz"
  save_compact_weights(delf_model, good)
  with np.load(good) as data:
    arrays = {name: data[name] for name in data.files}
  first = sorted(name for name in arrays if name.startswith("w"))[0]
  arrays[first] = arrays[first][..., :1]
  wrong_shape = tmp_path / "wrong_shape.npz"
  np.savez(wrong_shape, **arrays)
  with pytest.raises(CompactWeightsError, match="shape"):
    load_delf_model(wrong_shape)
  fewer = tmp_path / "fewer.npz"
  del arrays[first]
  np.savez(fewer, **arrays)
  with pytest.raises(CompactWeightsError, match="tensors, the DELF model has"):
    load_delf_model(fewer)


def test_weights_digest_follows_the_tensors_not_the_file_bytes(tmp_path):
  first, second, changed = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
  np.savez(first, w0000=np.arange(6, dtype=np.float32).reshape(2, 3), format_version=np.array(1))
  np.savez_compressed(
    second, format_version=np.array(1), w0000=np.arange(6, dtype=np.float32).reshape(2, 3)
  )
  assert first.read_bytes() != second.read_bytes()
  assert weights_digest(first) == weights_digest(second)
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  values[1, 2] = np.nextafter(values[1, 2], np.float32(10))  # One value, one ulp.
  np.savez(changed, w0000=values, format_version=np.array(1))
  assert weights_digest(changed) != weights_digest(first)
  reshaped = tmp_path / "d.npz"
  np.savez(reshaped, w0000=np.arange(6, dtype=np.float32).reshape(3, 2), format_version=np.array(1))
  assert weights_digest(reshaped) != weights_digest(first)
  with pytest.raises(CompactWeightsError, match="not found"):
    weights_digest(tmp_path / "missing.npz")

import numpy as np
import pytest

from delf_ret.extract import pca as pca_lib


def hand_model():
  return pca_lib.PcaModel(
    mean=np.array([1.0, 1.0], np.float32),
    projection=np.array([[0.0, 1.0], [1.0, 0.0]], np.float32),
    variances=np.array([4.0, 1.0], np.float32),
  )


def test_apply_pca_by_hand():
  model = hand_model()
  descriptors = np.array([[4.0, 5.0]], np.float32)  # centred: (3, 4); projected: (4, 3).
  np.testing.assert_allclose(pca_lib.apply_pca(descriptors, model, 2), [[0.8, 0.6]], atol=1e-6)
  # Whitened: (4 / 2, 3 / 1) = (2, 3) -> normalised.
  np.testing.assert_allclose(
    pca_lib.apply_pca(descriptors, model, 2, use_whitening=True),
    [[2 / np.sqrt(13), 3 / np.sqrt(13)]],
    atol=1e-6,
  )
  np.testing.assert_allclose(pca_lib.apply_pca(descriptors, model, 1), [[1.0]])


def test_apply_pca_rejects_bad_dimensions():
  with pytest.raises(pca_lib.PcaError, match="exceeds"):
    pca_lib.apply_pca(np.zeros((1, 2), np.float32), hand_model(), 3)
  with pytest.raises(pca_lib.PcaError, match="dimension 3"):
    pca_lib.apply_pca(np.zeros((1, 3), np.float32), hand_model(), 1)


def test_learn_pca_recovers_main_direction(tmp_path):
  rng = np.random.default_rng(0)
  data = np.outer(rng.normal(size=500), [3.0, 4.0]) / 5 + 0.01 * rng.normal(size=(500, 2)) + 7
  model = pca_lib.learn_pca(data)
  assert abs(abs(model.projection[0] @ np.array([0.6, 0.8])) - 1) < 1e-3
  np.testing.assert_allclose(model.mean, data.mean(0), rtol=1e-5)
  assert model.variances[0] > model.variances[1]
  paths = pca_lib.pca_paths(tmp_path)
  pca_lib.save_pca(model, *paths)
  loaded = pca_lib.load_pca(*paths)
  np.testing.assert_array_equal(loaded.projection, model.projection)
  np.testing.assert_array_equal(loaded.variances, model.variances)


def test_load_pca_errors(tmp_path):
  with pytest.raises(pca_lib.PcaError, match="mean"):
    pca_lib.load_pca(tmp_path / "missing.npy", tmp_path / "p.npy")
  np.save(tmp_path / "m.npy", np.zeros(3, np.float32))
  np.save(tmp_path / "p.npy", np.zeros((2, 4), np.float32))
  with pytest.raises(pca_lib.PcaError, match="disagree"):
    pca_lib.load_pca(tmp_path / "m.npy", tmp_path / "p.npy")


def test_l2_normalize_keeps_zero_rows():
  out = pca_lib.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
  np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_official_datum_files_round_trip_and_equal_the_npy_path(tmp_path):
  from delf_ret.extract.pca import apply_pca
  from delf_ret.extract.pca import learn_pca
  from delf_ret.extract.pca import load_pca
  from delf_ret.extract.pca import save_pca
  from delf_ret.features import read_datum
  from delf_ret.protos.delf_features_pb2 import DatumProto

  rng = np.random.default_rng(0)
  model = learn_pca(rng.normal(size=(300, 24)).astype(np.float32))
  npy = [tmp_path / f"pca_{n}.npy" for n in ("mean", "projection", "variances")]
  datum = [tmp_path / f"pca_{n}.datum" for n in ("mean", "projection", "variances")]
  save_pca(model, *npy)
  save_pca(model, *datum)
  # The .datum file is a DatumProto: shape, then row-major float values.
  proto = DatumProto()
  proto.ParseFromString(datum[1].read_bytes())
  assert list(proto.shape.dim) == [24, 24]
  np.testing.assert_array_equal(
    np.asarray(proto.float_list.value).reshape(24, 24), model.projection
  )
  np.testing.assert_array_equal(read_datum(datum[0]), model.mean)
  from_npy, from_datum = load_pca(*npy), load_pca(*datum)
  descriptors = rng.normal(size=(7, 24)).astype(np.float32)
  np.testing.assert_array_equal(
    apply_pca(descriptors, from_npy, 8, use_whitening=True),
    apply_pca(descriptors, from_datum, 8, use_whitening=True),
  )
  # Mixed formats and a hand-written file of the official layout load too.
  hand = DatumProto()
  hand.shape.dim.extend([24])
  hand.float_list.value.extend(model.mean.tolist())
  (tmp_path / "official_mean.datum").write_bytes(hand.SerializeToString())
  mixed = load_pca(tmp_path / "official_mean.datum", npy[1], datum[2])
  np.testing.assert_array_equal(mixed.mean, model.mean)


def test_bad_datum_files_give_pca_errors(tmp_path):
  from delf_ret.extract.pca import PcaError
  from delf_ret.extract.pca import load_pca
  from delf_ret.extract.pca import read_array
  from delf_ret.protos.delf_features_pb2 import DatumProto

  (tmp_path / "garbage.datum").write_bytes(b"\xff\xff\xff garbage")
  with pytest.raises(PcaError, match="not a .datum file"):
    read_array(tmp_path / "garbage.datum")
  short = DatumProto()
  short.shape.dim.extend([3, 4])
  short.float_list.value.extend([1.0] * 5)
  (tmp_path / "short.datum").write_bytes(short.SerializeToString())
  with pytest.raises(PcaError, match="5 values do not fill the shape"):
    load_pca(tmp_path / "short.datum", tmp_path / "short.datum")

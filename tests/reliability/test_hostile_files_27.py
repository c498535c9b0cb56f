"""Issue 27, the library side of hostile input: ground-truth pickles and MAT-files (item 10, item
5's .mat files), feature and .datum files (items 14, 15), weights, settings and configs (items 14,
16), each refused with the package's one-line error."""

import _codecs
import io
import pickle
import struct

import numpy as np
import pytest
import scipy.io

from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import read_revisited_gnd


class _Call:
  """Pickles to ``function(*args)`` (then ``BUILD state`` when a state is given)."""

  def __init__(self, function, *args, state=None):
    self.function, self.args, self.state = function, args, state

  def __reduce__(self):
    if self.state is None:
      return (self.function, self.args)
    return (self.function, self.args, self.state)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own array rebuilding function.


def _gnd(**changes):
  data = {
    "imlist": ["a", "b", "c"],
    "qimlist": ["q"],
    "gnd": [{"bbx": np.array([1.0, 2.0, 30.0, 40.0]), "easy": np.array([0]), "hard": [1]}],
  }
  data.update(changes)
  return data


def _gnd_with(easy, **changes):
  data = _gnd(**changes)
  data["gnd"][0]["easy"] = easy
  return data


def _refused(tmp_path, data: bytes, message: str, name: str = "gnd_bad.pkl"):
  (tmp_path / name).write_bytes(data)
  with pytest.raises(GroundTruthError, match=message) as caught:
    read_revisited_gnd(tmp_path / name)
  assert "\n" not in str(caught.value) and name in str(caught.value)


def test_a_pickled_object_array_over_the_files_own_bytes_is_refused(tmp_path):
  hostile = _Call(np.ndarray, (1,), np.dtype("O"), b"AAAAAAAA")
  _refused(tmp_path, pickle.dumps(_gnd_with(hostile), protocol=2), "refused")


def test_an_object_array_rebuilt_the_numpy_way_is_refused(tmp_path):
  objects = np.array([1, "x"], dtype=object)
  _refused(tmp_path, pickle.dumps(_gnd_with(objects), protocol=2), "only plain numeric")


def test_a_forged_structured_dtype_is_refused(tmp_path):
  forged = (3, "|", None, ("a",), {"a": (np.dtype("<i8"), 4096)}, 8, 1, 16)
  dtype = _Call(np.dtype, "V8", False, True, state=forged)
  array = _Call(np.ndarray, (1,), dtype, b"AAAAAAAA")
  _refused(tmp_path, pickle.dumps(_gnd_with(array), protocol=2), "refused")


def test_a_plain_dtype_with_a_forged_state_is_refused(tmp_path):
  forged = (3, "<", None, ("a",), {"a": (np.dtype("<i8"), 4096)}, 8, 1, 16)
  dtype = _Call(np.dtype, "i8", False, True, state=forged)
  reconstruct = _Call(_RECONSTRUCT, np.ndarray, (0,), b"b")
  reconstruct.state = (1, (1,), dtype, False, b"\0" * 8)
  _refused(tmp_path, pickle.dumps(_gnd_with(reconstruct), protocol=2), "dtype state")


def test_a_dtype_call_with_other_arguments_is_refused(tmp_path):
  reconstruct = _Call(_RECONSTRUCT, np.ndarray, (0,), b"b")
  reconstruct.state = (1, (1,), _Call(np.dtype, "i8", True, True), False, b"\0" * 8)
  _refused(tmp_path, pickle.dumps(_gnd_with(reconstruct), protocol=2), "numpy.dtype")


def test_a_zero_stride_view_is_refused(tmp_path):
  view = _Call(np.ndarray, (1 << 29,), np.dtype("i8"), b"\0" * 8, 0, (0,))
  _refused(tmp_path, pickle.dumps(_gnd_with(view), protocol=2), "numpy.ndarray")


def test_reconstructed_data_that_does_not_fill_its_shape_is_refused(tmp_path):
  reconstruct = _Call(_RECONSTRUCT, np.ndarray, (0,), b"b")
  reconstruct.state = (1, (1 << 27,), np.dtype("i8"), False, b"\0" * 8)
  _refused(tmp_path, pickle.dumps(_gnd_with(reconstruct), protocol=2), "data bytes")


def test_nested_lists_that_share_their_items_are_refused(tmp_path):
  nested: list = [0]
  for _ in range(27):  # 2**27 leaves in a file of a few hundred bytes.
    nested = [nested, nested]
  data = pickle.dumps(_gnd_with(nested))
  assert len(data) < 2000
  _refused(tmp_path, data, "nested deeper|flat list")


def test_a_name_nested_ten_thousand_lists_deep_is_refused(tmp_path):
  data = pickle.dumps(_gnd(imlist=["PLACEHOLDER", "b", "c"]), protocol=0)
  deep = b"(" * 10_000 + b"Va\n" + b"l" * 10_000  # MARK ... LIST: [[[...['a']...]]].
  _refused(tmp_path, data.replace(b"VPLACEHOLDER\n", deep), "nested deeper")


def test_an_unknown_codec_is_refused(tmp_path):
  hostile = _Call(_codecs.encode, "x", "no-such-codec")
  _refused(tmp_path, pickle.dumps(_gnd_with(hostile), protocol=2), "_codecs.encode")


def test_an_index_too_large_for_int64_is_refused(tmp_path):
  _refused(tmp_path, pickle.dumps(_gnd_with([2**70])), "out of range|malformed")


def test_an_index_list_longer_than_the_database_is_refused(tmp_path):
  _refused(tmp_path, pickle.dumps(_gnd_with([0] * 4)), "more than 3")


def test_a_numpy_scalar_index_and_protocol_5_arrays_load(tmp_path):
  data = _gnd_with(np.array([0, 2], np.int32))
  data["gnd"][0]["hard"] = [np.int64(1)]
  for protocol in (2, 4, 5):
    (tmp_path / "gnd_ok.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
    dataset = read_revisited_gnd(tmp_path / "gnd_ok.pkl")
    assert dataset.gnd[0]["easy"].tolist() == [0, 2] and dataset.gnd[0]["hard"].tolist() == [1]


def _mat(path, imlist, qimlist, records, compress=True):
  """A MAT-file in the official gnd_<dataset>.mat layout (revisited_op/dataset.py)."""
  cells = {
    key: np.empty((1, len(names)), object) for key, names in (("im", imlist), ("q", qimlist))
  }
  cells["im"][0, :] = imlist
  cells["q"][0, :] = qimlist
  gnd = np.zeros((1, len(records)), dtype=[(k, object) for k in ("bbx", "easy", "hard", "junk")])
  for i, record in enumerate(records):
    for key, value in {"bbx": [0, 0, 10, 10], **record}.items():
      gnd[0, i][key] = np.asarray(value, np.float64).reshape(1, -1)
  buffer = io.BytesIO()
  scipy.io.savemat(
    buffer, {"imlist": cells["im"], "qimlist": cells["q"], "gnd": gnd}, do_compression=compress
  )
  path.write_bytes(buffer.getvalue())
  return path


def test_the_official_gnd_mat_layout_loads_with_0_based_indices(tmp_path):
  record = {"bbx": [1, 2, 30, 40], "easy": [1, 3], "hard": [2], "junk": np.zeros(0)}
  path = _mat(tmp_path / "gnd_roxford5k.mat", ["a", "b", "c"], ["q"], [record])
  dataset = read_revisited_gnd(path, tmp_path)
  assert dataset.name == "roxford5k" and dataset.imlist == ["a", "b", "c"]
  assert dataset.qimlist == ["q"] and dataset.protocol == "revisited"
  assert dataset.gnd[0]["easy"].tolist() == [0, 2] and dataset.gnd[0]["hard"].tolist() == [1]
  assert dataset.gnd[0]["junk"].tolist() == []
  np.testing.assert_array_equal(dataset.gnd[0]["bbx"], [1, 2, 30, 40])


@pytest.mark.parametrize(
  "imlist, record, message",
  [
    (["a", "b"], {"easy": [0]}, "out of range"),  # 1-based: 0 is before the first image.
    (["a", "b"], {"easy": [3]}, "out of range"),
    (["a", "../b"], {"easy": [1]}, "not a plain file name"),
    (["a", "b"], {"easy": [1.5]}, "whole numbers"),
    (["a", "b"], {"bbx": [1, 2, np.nan, 4]}, "4 finite numbers"),
  ],
)
def test_bad_content_in_a_mat_file_is_refused(tmp_path, imlist, record, message):
  path = _mat(tmp_path / "gnd_bad.mat", imlist, ["q"], [record])
  _refused(tmp_path, path.read_bytes(), message, "gnd_bad.mat")


def test_a_mat_cell_array_declaring_a_billion_cells_is_refused_before_allocating(tmp_path):
  path = _mat(tmp_path / "gnd_x.mat", ["a"], ["q"], [{"easy": [1]}], compress=False)
  data = bytearray(path.read_bytes())
  # The first variable's miMATRIX: 8-byte tag, 16 bytes of flags, the dims tag, then the dims.
  dims_at = 128 + 8 + 16 + 8
  assert struct.unpack_from("<2i", data, dims_at) == (1, 1)
  struct.pack_into("<2i", data, dims_at, 30_000, 30_000)
  _refused(tmp_path, bytes(data), "cells", "gnd_x.mat")


def test_a_mat_file_that_inflates_past_the_bound_is_refused(tmp_path):
  buffer = io.BytesIO()
  zeros = np.zeros((65 << 20) // 8)  # Past the 64 MiB of gnd_files.MAX_FILE_BYTES.
  scipy.io.savemat(buffer, {"imlist": zeros}, do_compression=True)
  assert len(buffer.getvalue()) < 1 << 20
  _refused(tmp_path, buffer.getvalue(), "inflate to more than", "gnd_bomb.mat")


def test_a_mat_file_holding_no_gnd_is_refused(tmp_path):
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"imlist": np.zeros(3)})
  _refused(tmp_path, buffer.getvalue(), "missing variables", "gnd_none.mat")


def test_a_pickle_of_millions_of_one_byte_dicts_is_refused_before_building_them(tmp_path):
  # "}a": a new empty dict appended to the list; 7 MB of it would build 3.5 million dicts.
  data = b"\x80\x02]" + b"}a" * 3_500_001 + b"."
  _refused(tmp_path, data, "more than 7000000 pickle opcodes")

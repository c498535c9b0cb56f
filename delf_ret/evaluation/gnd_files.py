"""Reading the bytes of Revisited ground-truth files without running code or trusting sizes.

Two published layouts hold the same content (see delf_ret.evaluation.ground_truth):
``gnd_<dataset>.pkl`` (a pickle of dicts, lists, strings and numpy arrays) and
``gnd_<dataset>.mat`` (MATLAB 5: cell arrays ``imlist``/``qimlist`` of names and a
struct array ``gnd`` with ``easy``/``hard``/``junk`` 1-based index rows and ``bbx``,
the file the official DELG instructions download). Both readers return the
pickle's layout: ``{"imlist": [...], "qimlist": [...], "gnd": [{"bbx": ..., "easy": ...}]}``
(.mat indices still 1-based: the caller subtracts 1).

Hostile files: a pickle may call only numpy's own array rebuilding, with the
arguments numpy itself pickles (plain numeric and bool dtypes, data bytes that
fill the shape exactly, copied into a fresh array); object and structured
dtypes, direct ``numpy.ndarray``/``numpy.dtype`` calls with other arguments and
views over foreign memory are refused. A .mat file is read by scipy.io.loadmat
(which runs no code) after its element headers are checked: compressed parts
may inflate to at most MAX_FILE_BYTES and cell/struct arrays may not declare
more cells than their bytes can hold. Nesting is bounded by MAX_DEPTH.
Errors are ValueError or pickle.UnpicklingError with the reason; the caller
names the file.
"""

from __future__ import annotations

import io
import math
import pathlib
import pickle
import pickletools
import struct
import warnings
import zlib
from typing import Literal
from typing import NoReturn

import numpy as np

# The published gnd_roxford5k.pkl / .mat are under 1 MB; 64 MiB leaves room for
# bigger benchmarks while bounding what one file can make the reader hold.
MAX_FILE_BYTES = 64 << 20
# Containers may nest this deep (the published layout nests 4: dict, list, dict, array).
MAX_DEPTH = 8
# Arrays in a ground-truth file have at most this many dimensions (the .mat rows are 2-D).
MAX_NDIM = 4
# Database and query images a ground-truth file may list: R1M (1,001,001 distractors) plus
# ROxford5k fits twice; ROxford5k has 70 queries.
MAX_IMAGES = 2_000_000
MAX_QUERIES = 100_000
# Each pickle opcode makes at most one object (some 60 bytes, a dict more): the published
# ROxford5k file has about 12,000; a name takes 2, so 3 per image of MAX_IMAGES plus room for
# the queries, while one byte per object ("}" is a new dict) can no longer fill 64 MiB x 64.
MAX_PICKLE_OPCODES = 3 * MAX_IMAGES + 1_000_000

_PLAIN_DTYPES = frozenset(("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"))


def _refuse(reason: str) -> NoReturn:
  raise pickle.UnpicklingError(f"refused: {reason}")


class _NdarrayMarker:
  """Stands for ``numpy.ndarray`` as the first argument of numpy's ``_reconstruct``."""

  def __call__(self, *unused_args, **unused_kwargs):
    _refuse("a direct call of numpy.ndarray (arrays are only rebuilt the way numpy pickles them)")


_NDARRAY = _NdarrayMarker()


class _PendingDtype:
  """A plain numeric dtype being unpickled: ``dtype(code, False, True)`` then its BUILD state."""

  __slots__ = ("dtype", "built")

  def __init__(self, code: str):
    self.dtype = np.dtype(code)
    self.built = False

  def __setstate__(self, state):
    plain = (
      type(state) is tuple
      and len(state) == 8
      and type(state[0]) is int
      and state[0] == 3
      and state[1] in ("<", ">", "|", "=")
      and all(item is None for item in state[2:5])
      and all(type(item) is int and item == value for item, value in zip(state[5:], (-1, -1, 0)))
    )
    if self.built or not plain:
      _refuse(f"a numpy dtype state other than a plain number's ({str(state)[:60]})")
    if state[1] in ("<", ">") and self.dtype.itemsize > 1:
      self.dtype = self.dtype.newbyteorder(state[1])
    self.built = True


def _make_dtype(*args, **kwargs) -> _PendingDtype:
  """numpy.dtype as numpy pickles it: ``dtype(<plain code>, False, True)``, nothing else."""
  if (
    kwargs
    or len(args) != 3
    or type(args[0]) is not str
    or args[0] not in _PLAIN_DTYPES
    or args[1:] != (False, True)
  ):
    _refuse(
      f"numpy.dtype{str(args)[:60]}: only plain numeric and bool dtypes "
      f"({', '.join(sorted(_PLAIN_DTYPES))}), as numpy pickles them"
    )
  return _PendingDtype(args[0])


def _data_bytes(data) -> bytes:
  if isinstance(data, str):  # Python 2 pickles read with encoding="latin1".
    return data.encode("latin1")
  if type(data) in (bytes, bytearray):
    return bytes(data)
  _refuse(f"array data of type {type(data).__name__}")


def _array(data, dtype, shape, order: Literal["C", "F"]) -> np.ndarray:
  """A fresh C-ordered array of ``shape`` from ``data`` that fills it exactly."""
  if type(dtype) is not _PendingDtype:
    _refuse(f"an array whose dtype is a {type(dtype).__name__}")
  if (
    type(shape) is not tuple
    or len(shape) > MAX_NDIM
    or not all(type(d) is int and d >= 0 for d in shape)
  ):
    _refuse(f"array shape {str(shape)[:60]} (at most {MAX_NDIM} non-negative sizes)")
  raw = _data_bytes(data)
  count = math.prod(shape)
  if count * dtype.dtype.itemsize != len(raw):
    _refuse(f"{len(raw)} data bytes for an array of shape {shape} and dtype {dtype.dtype}")
  flat = np.frombuffer(raw, dtype.dtype, count)
  return np.array(flat.reshape(shape, order=order), dtype.dtype.newbyteorder("="), order="C")


class _PendingArray:
  """An ndarray being unpickled: ``_reconstruct(ndarray, (0,), b'b')`` then its BUILD state."""

  __slots__ = ("array",)

  def __init__(self, array: np.ndarray | None = None):
    self.array = array

  def __setstate__(self, state):
    if self.array is not None:
      _refuse("a second state for one numpy array")
    if type(state) is not tuple or len(state) != 5 or state[0] != 1 or type(state[3]) is not bool:
      _refuse(f"a numpy array state other than numpy's own ({str(state)[:60]})")
    _, shape, dtype, fortran, data = state
    self.array = _array(data, dtype, shape, "F" if fortran else "C")


def _reconstruct(*args, **kwargs) -> _PendingArray:
  """numpy's ``_reconstruct`` as numpy pickles an array: ``(ndarray, (0,), b'b')`` only."""
  if kwargs or len(args) != 3 or args[0] is not _NDARRAY or args[1] != (0,) or args[2] != b"b":
    _refuse(f"numpy _reconstruct{str(args)[:60]}: only numpy's own (ndarray, (0,), b'b')")
  return _PendingArray()


def _frombuffer(*args, **kwargs) -> _PendingArray:
  """numpy's protocol-5 ``_frombuffer(data, dtype, shape, order)`` (data in-band)."""
  if kwargs or len(args) != 4 or args[3] not in ("C", "F"):
    _refuse(f"numpy _frombuffer with arguments {str(args)[:60]}")
  return _PendingArray(_array(args[0], args[1], args[2], args[3]))


def _scalar(*args, **kwargs):
  """numpy's ``scalar(dtype, data)``: a Python number of a plain dtype."""
  if kwargs or len(args) != 2 or type(args[0]) is not _PendingDtype:
    _refuse(f"numpy scalar{str(args)[:60]}: only a plain dtype and its bytes")
  return _array(args[1], args[0], (), "C").item()


def _encode(*args, **kwargs) -> bytes:
  """``_codecs.encode(text, "latin1")``: how protocol-2 pickles store bytes."""
  if kwargs or len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
    _refuse(f"_codecs.encode{str(args)[:60]}: only latin1 text")
  return args[0].encode("latin1")


def _empty_bytes(*args, **kwargs) -> bytes:
  """``bytes()``: how protocol-2 pickles store the data of an empty array."""
  if args or kwargs:
    _refuse(f"bytes{str(args)[:60]}: only bytes() (empty)")
  return b""


_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_PICKLE_GLOBALS = {
  **{(module, "_reconstruct"): _reconstruct for module in _CORE},
  **{(module, "scalar"): _scalar for module in _CORE},
  **{
    (module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")
  },
  ("numpy", "ndarray"): _NDARRAY,
  ("numpy", "dtype"): _make_dtype,
  ("_codecs", "encode"): _encode,
  ("__builtin__", "bytes"): _empty_bytes,
  ("builtins", "bytes"): _empty_bytes,
}


class _GroundTruthUnpickler(pickle.Unpickler):
  """Builds containers, strings, numbers and checked numpy arrays; any other global is refused."""

  def find_class(self, module: str, name: str):
    found = _PICKLE_GLOBALS.get((module, name))
    if found is None:
      raise pickle.UnpicklingError(
        f"refused to load {module}.{name}: a ground-truth file holds "
        f"only lists, dicts, strings, numbers and numpy arrays"
      )
    return found

  def persistent_load(self, pid):
    _refuse("a persistent id")


_PLAIN_TYPES = (str, int, float, bool, type(None))


def _resolve(value, depth: int, seen: dict[int, object]):
  """``value`` with every pending array replaced by its array; refuses other types and depth."""
  if type(value) in _PLAIN_TYPES:
    return value
  if id(value) in seen:
    return seen[id(value)]
  if depth > MAX_DEPTH:
    _refuse(f"containers nested deeper than {MAX_DEPTH}")
  if type(value) is _PendingArray:
    if value.array is None:
      _refuse("a numpy array without its data")
    seen[id(value)] = value.array
    return value.array
  if type(value) is list:
    seen[id(value)] = value
    for i, item in enumerate(value):
      value[i] = _resolve(item, depth + 1, seen)
    return value
  if type(value) is tuple:
    resolved = tuple(_resolve(item, depth + 1, seen) for item in value)
    seen[id(value)] = resolved
    return resolved
  if type(value) is dict:
    seen[id(value)] = value
    for key in value:
      if type(key) is not str:
        _refuse(f"a dict key of type {type(key).__name__}")
      value[key] = _resolve(value[key], depth + 1, seen)
    return value
  _refuse(
    f"a {type(value).__name__} (a ground-truth file holds dicts, lists, strings, numbers "
    f"and arrays)"
  )


def read_file_bytes(path: pathlib.Path) -> bytes:
  """The bytes of a ground-truth file; ValueError above MAX_FILE_BYTES."""
  size = path.stat().st_size
  if size > MAX_FILE_BYTES:
    raise ValueError(
      f"{size} bytes, more than the {MAX_FILE_BYTES >> 20} MiB a ground-truth file may have"
    )
  return path.read_bytes()


def load_gnd_pickle(data: bytes) -> object:
  """The object in a ground-truth pickle (never runs code; see the module docstring).

  Every opcode and counted length is checked against the bytes first
  (pickletools), so no declared length makes the unpickler allocate more than
  the file holds, and there are at most MAX_PICKLE_OPCODES opcodes.
  """
  with warnings.catch_warnings():  # E.g. "invalid escape sequence" in a damaged STRING.
    warnings.simplefilter("ignore", DeprecationWarning)
    for count, _ in enumerate(pickletools.genops(io.BytesIO(data))):
      if count >= MAX_PICKLE_OPCODES:
        raise ValueError(f"more than {MAX_PICKLE_OPCODES} pickle opcodes")
  loaded = _GroundTruthUnpickler(io.BytesIO(data), encoding="latin1").load()
  return _resolve(loaded, 0, {})


_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
# The element types of MATLAB 5 (8, 10 and 11 are reserved): scipy's reader crashes
# (segmentation fault) on some others, so every element's type is checked first.
_MI_TYPES = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18))
_MX_CELL, _MX_STRUCT, _MX_CHAR, _MX_UINT8 = 1, 2, 4, 9
_MX_NUMBERS = frozenset(range(6, 16))  # double, single, int8 ... uint64.
# Cells, structs, text and dense numbers: what a ground-truth file holds (no objects, sparse
# arrays, function handles or opaque classes).
_MX_CLASSES = frozenset((_MX_CELL, _MX_STRUCT, _MX_CHAR)) | _MX_NUMBERS


class _MatScan:
  """Walks the element headers of a MATLAB 5 file's bytes, checking declared sizes."""

  def __init__(self, endian: str):
    self.endian = endian
    self.inflated = 0

  def tag(self, data: bytes, offset: int, end: int) -> tuple[int, int, int, int]:
    """(type, byte count, data start, next element) of the element at ``offset``."""
    if offset + 8 > end:
      raise ValueError(f"element header at byte {offset} runs past its container")
    mdtype, nbytes = struct.unpack_from(self.endian + "II", data, offset)
    if mdtype >> 16:  # Small data element: the count and type share the first 4 bytes.
      if mdtype >> 16 > 4 or mdtype & 0xFFFF not in _MI_TYPES - {_MI_MATRIX, _MI_COMPRESSED}:
        raise ValueError(
          f"small element at byte {offset}: type {mdtype & 0xFFFF}, {mdtype >> 16} bytes"
        )
      return mdtype & 0xFFFF, mdtype >> 16, offset + 4, offset + 8
    if mdtype not in _MI_TYPES:
      raise ValueError(f"element at byte {offset} has the unknown type {mdtype}")
    start = offset + 8
    stop = start + nbytes
    if stop > end:
      raise ValueError(f"element at byte {offset} declares {nbytes} bytes, past its container")
    return mdtype, nbytes, start, start + (-nbytes % 8 if mdtype != _MI_COMPRESSED else 0) + nbytes

  def elements(self, data: bytes, offset: int, end: int, depth: int) -> None:
    while offset < end:
      mdtype, nbytes, start, offset = self.tag(data, offset, end)
      if mdtype == _MI_COMPRESSED:
        self.elements_of(self.inflate(data[start : start + nbytes]), depth)
      elif mdtype == _MI_MATRIX:
        self.matrix(data, start, start + nbytes, depth)

  def elements_of(self, data: bytes, depth: int) -> None:
    self.elements(data, 0, len(data), depth)

  def inflate(self, compressed: bytes) -> bytes:
    budget = MAX_FILE_BYTES - self.inflated
    inflater = zlib.decompressobj()
    inflated = inflater.decompress(compressed, budget + 1)
    self.inflated += len(inflated)
    if len(inflated) > budget:
      raise ValueError(f"compressed parts inflate to more than {MAX_FILE_BYTES >> 20} MiB")
    return inflated

  def matrix(self, data: bytes, start: int, end: int, depth: int) -> None:
    """Checks one miMATRIX: its dimensions, and for cells/structs the cells its bytes can hold."""
    if depth > MAX_DEPTH:
      raise ValueError(f"arrays nested deeper than {MAX_DEPTH}")
    if start == end:  # An empty element: an empty array.
      return
    flags_type, flags_bytes, flags_start, offset = self.tag(data, start, end)
    dims_type, dims_bytes, dims_start, offset = self.tag(data, offset, end)
    name_type, _, _, offset = self.tag(data, offset, end)  # The array's name.
    if (flags_type, flags_bytes, dims_type, name_type) != (_MI_UINT32, 8, _MI_INT32, _MI_INT8):
      raise ValueError(f"array header at byte {start} is not flags, dimensions and name")
    flags = struct.unpack_from(self.endian + "I", data, flags_start)[0]
    mxclass, complex_part = flags & 0xFF, bool(flags & 0x800)
    if (
      flags & 0xFFFFF100  # Bits past complex, global and logical.
      or mxclass not in _MX_CLASSES
      or (flags & 0x200 and mxclass != _MX_UINT8)  # Logical arrays are stored as uint8.
      or (complex_part and mxclass not in _MX_NUMBERS)
    ):  # scipy's reader crashes on some of these.
      raise ValueError(f"array flags {flags:#x} (class {mxclass}) at byte {start}")
    dims = struct.unpack_from(f"{self.endian}{dims_bytes // 4}i", data, dims_start)
    if dims_bytes % 4 or not 2 <= len(dims) <= MAX_NDIM or any(d < 0 for d in dims):
      raise ValueError(f"array dimensions {list(dims)[:8]}")
    if mxclass not in (_MX_CELL, _MX_STRUCT):
      parts = 0  # Numbers and text: every data element's type and size, and their count.
      while offset < end:
        mdtype, _, _, offset = self.tag(data, offset, end)
        if mdtype in (_MI_MATRIX, _MI_COMPRESSED):
          raise ValueError(f"an array element inside a {mxclass}-class array")
        parts += 1
      expected = 1 + complex_part  # Real part (+ imaginary part).
      if parts != expected:
        raise ValueError(f"array at byte {start} holds {parts} data parts, not {expected}")
      return
    fields = 1
    if mxclass == _MX_STRUCT:
      length_type, _, length_start, offset = self.tag(data, offset, end)
      length = struct.unpack_from(self.endian + "i", data, length_start)[0]
      names_type, names_bytes, _, offset = self.tag(data, offset, end)
      if (length_type, names_type) != (_MI_INT32, _MI_INT8) or length <= 0 or names_bytes % length:
        raise ValueError(f"struct field names at byte {start}")
      fields = names_bytes // length
    cells = math.prod(dims)
    if cells * max(fields, 1) * 8 > end - offset:
      raise ValueError(f"an array of {cells} cells of {fields} fields in {end - offset} bytes")
    for _ in range(cells * fields):
      mdtype, nbytes, child_start, offset = self.tag(data, offset, end)
      if mdtype != _MI_MATRIX:
        raise ValueError(f"a cell of element type {mdtype}")
      self.matrix(data, child_start, child_start + nbytes, depth + 1)


def check_mat_file(data: bytes) -> None:
  """ValueError unless ``data`` is a MATLAB 5 file whose declared sizes its bytes can hold."""
  if len(data) < 128 or data[124:126] not in (b"\x00\x01", b"\x01\x00"):
    if data[:19] == b"MATLAB 7.3 MAT-file":
      raise ValueError("a MATLAB 7.3 (HDF5) file; save it with -v7 (the published files are)")
    raise ValueError("not a MATLAB 5/7 MAT-file")
  endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
  if endian is None:
    raise ValueError("not a MATLAB 5/7 MAT-file (no byte-order mark)")
  try:
    _MatScan(endian).elements(data, 128, len(data), 0)
  except (struct.error, zlib.error) as error:
    raise ValueError(f"damaged MAT-file ({error})") from None


def _mat_names(cells, key: str) -> list[str]:
  """Names of a cell array of char rows (``imlist``, ``qimlist``)."""
  if not isinstance(cells, np.ndarray) or cells.dtype != object:
    raise ValueError(f"{key} must be a cell array of names")
  if cells.size > MAX_IMAGES:
    raise ValueError(f"{key} has {cells.size} names, more than {MAX_IMAGES}")
  names = []
  for cell in cells.reshape(-1):
    if not isinstance(cell, np.ndarray) or cell.dtype.kind != "U" or cell.size != 1:
      raise ValueError(f"{key} holds a {type(cell).__name__} that is not one name")
    names.append(str(cell.reshape(-1)[0]))
  return names


def _mat_number_array(value, what: str) -> np.ndarray:
  if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
    raise ValueError(f"{what} must be a numeric array")
  return value.reshape(-1)


def load_gnd_mat(data: bytes) -> dict:
  """The content of an official ``gnd_<dataset>.mat`` in the pickle's layout (1-based indices).

  Layout (the official DELF code, revisited_op/dataset.py): ``imlist`` and
  ``qimlist`` cell arrays of names; ``gnd`` a struct array, one record per query,
  with ``bbx`` (x1, y1, x2, y2) and ``easy``/``hard``/``junk`` rows of 1-based indices.
  """
  check_mat_file(data)
  # Lazy: SciPy (a second to import), only for .mat ground truth.
  from scipy.io import loadmat

  try:
    content = loadmat(io.BytesIO(data), chars_as_strings=True, struct_as_record=True)
  except MemoryError:
    raise
  except Exception as error:  # scipy raises many types on damaged files (UnboundLocalError too).
    raise ValueError(f"scipy cannot read it ({type(error).__name__}: {error})") from None
  missing = [key for key in ("imlist", "qimlist", "gnd") if key not in content]
  if missing:
    raise ValueError(f"missing variables {missing}")
  records = content["gnd"]
  if not isinstance(records, np.ndarray) or records.dtype.names is None:
    raise ValueError("gnd must be a struct array")
  if records.size > MAX_QUERIES:
    raise ValueError(f"gnd has {records.size} records, more than {MAX_QUERIES}")
  gnd = []
  for number, record in enumerate(records.reshape(-1)):
    entry = {}
    for key in ("bbx", "easy", "hard", "junk"):
      if key in records.dtype.names:
        entry[key] = _mat_number_array(record[key], f"gnd record {number} {key}")
    gnd.append(entry)
  return {
    "imlist": _mat_names(content["imlist"], "imlist"),
    "qimlist": _mat_names(content["qimlist"], "qimlist"),
    "gnd": gnd,
  }

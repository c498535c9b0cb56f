"""DELF as a TensorFlow SavedModel with a self-contained extraction signature.

Signature ``extract`` (also ``serving_default``):
  inputs:  image uint8 [H, W, 3] (RGB); scales float32 [S] (each level is the
           image resized to round(H s) x round(W s), bilinear, antialiased);
           score_threshold float32 []; max_feature_num int32 [].
  outputs: locations float32 [N, 2] ((y, x) pixels of the input image, centres
           of the receptive fields), scales float32 [N] (the level's scale),
           scores float32 [N] (attention), descriptors float32 [N, 1024] (raw
           conv4 features: L2 norm and PCA are applied afterwards, as for a
           .keras checkpoint, by delf_ret.extract.extractor.DelfExtractor).
Features are the cells with attention >= score_threshold over all levels, the
``max_feature_num`` best by attention (ties: level order, then row-major).

A config whose model_path is a SavedModel folder makes the extraction tools use
it instead of a .keras checkpoint, with the same features.

Published models of the official DELF/DELG code load too: their serving
signature takes ``input_image`` uint8 [H, W, 3], ``input_scales`` float [S],
``input_max_feature_num`` int, ``input_abs_thres`` float (DELG also
``input_global_scales_ind`` int [G]) and returns ``boxes`` [N, 4] (ymin, xmin,
ymax, xmax receptive-field boxes in pixels of the input image), ``features``
[N, D] (raw descriptors), ``scales`` [N] and ``scores`` [N] or [N, 1] (DELG also
``global_descriptors`` [G, D'], one raw global descriptor per scale of
``input_global_scales_ind``). The image is shrunk to ``max_image_size`` first
and keypoints are the box centres mapped back to the original image, as the
official extractor computes them. ``select_with_global`` also returns the global
descriptors, which delf_ret.extract.global_features pools as the official DELG
extractor does. ``export_official_signature`` writes such a model from a delf-ret
model (for tests and for tools that expect that layout); its DELG stand-in's
global output is GeM (p = 3) of the conv4 map at each global scale (the published
DELG models pool conv5 and add a learned FC layer).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

from delf_ret.atomic import respect_umask
from delf_ret.errors import ModelFileError
from delf_ret.extract.geometry import RESNET50_CONV4
from delf_ret.extract.geometry import ReceptiveField
from delf_ret.extract.inference import resize_image
from delf_ret.extract.selection import SelectedFeatures


def is_saved_model(path: str | os.PathLike) -> bool:
  """True for a folder holding a SavedModel (saved_model.pb)."""
  return (pathlib.Path(path) / "saved_model.pb").is_file()


class DelfServingModule(tf.Module):
  """Wraps a DelfModel with the ``extract`` signature (see the module docstring)."""

  def __init__(self, model, field: ReceptiveField = RESNET50_CONV4):
    super().__init__()
    self.model = model
    self.field = field

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
      tf.TensorSpec([None], tf.float32, name="scales"),
      tf.TensorSpec([], tf.float32, name="score_threshold"),
      tf.TensorSpec([], tf.int32, name="max_feature_num"),
    ]
  )
  def extract(self, image, scales, score_threshold, max_feature_num):
    height = tf.cast(tf.shape(image)[0], tf.float64)
    width = tf.cast(tf.shape(image)[1], tf.float64)
    arrays = {
      name: tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
      for name, dtype in (
        ("locations", tf.float32),
        ("scales", tf.float32),
        ("scores", tf.float32),
        ("descriptors", tf.float32),
      )
    }
    offset = self.field.padding - (self.field.size - 1) / 2.0
    for i in tf.range(tf.size(scales)):
      scale = tf.cast(scales[i], tf.float64)
      size_y = tf.maximum(tf.constant(1.0, tf.float64), tf.round(height * scale))
      size_x = tf.maximum(tf.constant(1.0, tf.float64), tf.round(width * scale))
      resized = resize_image(image, tf.cast(tf.stack([size_y, size_x]), tf.int32))[None]
      features, attention = self.model.feature_maps(resized, training=False)
      features, attention = features[0], attention[0]
      cells = tf.where(attention >= score_threshold)
      ratio = tf.stack([size_y / height, size_x / width])
      centres = (self.field.stride * tf.cast(cells, tf.float64) - offset) / ratio
      count = tf.shape(cells)[0]
      arrays["locations"] = arrays["locations"].write(i, tf.cast(centres, tf.float32))
      arrays["scales"] = arrays["scales"].write(i, tf.fill([count], scales[i]))
      arrays["scores"] = arrays["scores"].write(i, tf.gather_nd(attention, cells))
      arrays["descriptors"] = arrays["descriptors"].write(i, tf.gather_nd(features, cells))
    gathered = {name: array.concat() for name, array in arrays.items()}
    order = tf.argsort(-gathered["scores"], stable=True)[:max_feature_num]
    return {
      "locations": tf.reshape(tf.gather(gathered["locations"], order), [-1, 2]),
      "scales": tf.gather(gathered["scales"], order),
      "scores": tf.gather(gathered["scores"], order),
      "descriptors": tf.reshape(
        tf.gather(gathered["descriptors"], order), [-1, self.model.backbone.output.shape[-1]]
      ),
    }


OFFICIAL_INPUTS = ("input_image", "input_scales", "input_max_feature_num", "input_abs_thres")
GLOBAL_INPUT = "input_global_scales_ind"  # DELG: indices into input_scales of the global scales.
GLOBAL_OUTPUT = "global_descriptors"  # DELG: one raw global descriptor per global scale.


class OfficialSignatureModule(tf.Module):
  """A delf-ret model behind the official DELF (or, with ``delg``, DELG) serving signature."""

  def __init__(self, model, field: ReceptiveField = RESNET50_CONV4, delg: bool = False):
    super().__init__()
    self.inner = DelfServingModule(model, field)
    self.field = field
    specs = [
      tf.TensorSpec([None, None, 3], tf.uint8, name="input_image"),
      tf.TensorSpec([None], tf.float32, name="input_scales"),
      tf.TensorSpec([], tf.int32, name="input_max_feature_num"),
      tf.TensorSpec([], tf.float32, name="input_abs_thres"),
    ]
    if delg:
      specs.append(tf.TensorSpec([None], tf.int32, name="input_global_scales_ind"))
      self.serve = tf.function(self._serve_delg, input_signature=specs)
    else:
      self.serve = tf.function(self._serve_delf, input_signature=specs)

  def _local(self, image, scales, max_feature_num, threshold):
    out = self.inner.extract(image, scales, threshold, max_feature_num)
    half = (self.field.size - 1) / 2.0  # Box = centre -/+ half the receptive field / scale.
    extent = half / out["scales"][:, None]
    boxes = tf.concat([out["locations"] - extent, out["locations"] + extent], axis=1)
    return {
      "boxes": boxes,
      "features": out["descriptors"],
      "scales": out["scales"],
      "scores": out["scores"][:, None],
    }

  def _serve_delf(self, input_image, input_scales, input_max_feature_num, input_abs_thres):
    return self._local(input_image, input_scales, input_max_feature_num, input_abs_thres)

  def _serve_delg(
    self, input_image, input_scales, input_max_feature_num, input_abs_thres, input_global_scales_ind
  ):
    outputs = self._local(input_image, input_scales, input_max_feature_num, input_abs_thres)
    outputs["global_descriptors"] = self._global(input_image, input_scales, input_global_scales_ind)
    return outputs

  def _global(self, image, scales, indices):
    """Stand-in DELG global output: raw GeM (p = 3, eps 1e-6) of the conv4 map of the image
    resized to each scale ``scales[i]``, i in ``indices``: float32 [G, D]."""
    height = tf.cast(tf.shape(image)[0], tf.float64)
    width = tf.cast(tf.shape(image)[1], tf.float64)
    depth = self.inner.model.backbone.output.shape[-1]
    pooled = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[depth])
    for j in tf.range(tf.size(indices)):
      scale = tf.cast(tf.gather(scales, indices[j]), tf.float64)
      size_y = tf.maximum(tf.constant(1.0, tf.float64), tf.round(height * scale))
      size_x = tf.maximum(tf.constant(1.0, tf.float64), tf.round(width * scale))
      resized = resize_image(image, tf.cast(tf.stack([size_y, size_x]), tf.int32))[None]
      features, _ = self.inner.model.feature_maps(resized, training=False)
      cubes = tf.pow(tf.maximum(features[0], 1e-6), 3.0)
      pooled = pooled.write(j, tf.pow(tf.reduce_mean(cubes, axis=[0, 1]), 1.0 / 3.0))
    return tf.reshape(pooled.stack(), [-1, depth])


def export_official_signature(
  model, output_dir: str | os.PathLike, delg: bool = False
) -> pathlib.Path:
  """Writes ``model`` as a SavedModel with the official DELF (or DELG) serving signature.

  Boxes are the receptive fields of the selected cells scaled back to the
  input image; their centres are delf-ret's keypoints, so extraction through
  this model gives the features of the model itself.
  """
  output_dir = pathlib.Path(output_dir)
  module = OfficialSignatureModule(model, delg=delg)
  tf.saved_model.save(module, str(output_dir), signatures={"serving_default": module.serve})
  return output_dir


def export_saved_model(model, output_dir: str | os.PathLike) -> pathlib.Path:
  """Writes the SavedModel to ``output_dir`` (replaced atomically if it exists)."""
  output_dir = pathlib.Path(output_dir)
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  module = DelfServingModule(model)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
  respect_umask(staging, directory=True)
  try:
    tf.saved_model.save(
      module,
      str(staging),
      signatures={"serving_default": module.extract, "extract": module.extract},
    )
    if output_dir.exists():
      old = output_dir.with_name(f".{output_dir.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(output_dir, old)
      os.replace(staging, output_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(staging, output_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return output_dir


TRUST_WARNING = (
  "{path} is a SavedModel: loading it runs the TensorFlow graph it holds, which "
  "can read and write files; load only SavedModels from a source you trust"
)


class SavedModelExtractor:
  """Runs the ``extract`` signature of an exported DELF SavedModel.

  A SavedModel is code: its graph runs with the user's rights (it can read and
  write files). Loading one logs TRUST_WARNING once per path.
  """

  _warned: set[str] = set()

  def __init__(self, path: str | os.PathLike):
    if not is_saved_model(path):
      raise ModelFileError(f"no SavedModel (saved_model.pb) in {path}")
    if str(path) not in SavedModelExtractor._warned:
      SavedModelExtractor._warned.add(str(path))
      logging.warning(TRUST_WARNING.format(path=path))
    self.loaded = tf.saved_model.load(str(path))
    self.path = path
    signatures = dict(self.loaded.signatures)
    self.official = None
    self._global_output = False
    if "extract" in signatures:
      self.signature = signatures["extract"]
    else:
      for name, function in signatures.items():
        inputs = set(function.structured_input_signature[1])
        if set(OFFICIAL_INPUTS) <= inputs:
          self.signature, self.official = function, inputs
          self._global_output = GLOBAL_INPUT in inputs and GLOBAL_OUTPUT in set(
            function.structured_outputs
          )
          break
      else:
        self.signature = self._tf1_tensors()
        if self.signature is None:
          found = (
            "; ".join(
              f"{name}({', '.join(sorted(function.structured_input_signature[1]))})"
              for name, function in signatures.items()
            )
            or "none"
          )
          raise ModelFileError(
            f"{path}: no usable signature: expected delf-ret's 'extract' or "
            f"the official DELF one with inputs {', '.join(OFFICIAL_INPUTS)} "
            f"(or a TF1 graph with tensors of those names); found {found}"
          )
        self.official = set(OFFICIAL_INPUTS)

  @property
  def has_global_output(self) -> bool:
    """Whether the model returns DELG global descriptors (official DELG signature)."""
    return self._global_output

  def _tf1_tensors(self):
    """A function over the TF1 graph's tensors ``input_image:0`` ... -> ``boxes:0`` ..., or None.

    The official TF1 DELF module has no signature; its tensors carry the same
    names as the TF2 signature's inputs and outputs.
    """
    if not hasattr(self.loaded, "prune"):
      return None
    outputs = ("boxes", "features", "scales", "scores")
    try:
      pruned = self.loaded.prune(
        [f"{name}:0" for name in OFFICIAL_INPUTS], [f"{name}:0" for name in outputs]
      )
    except (KeyError, ValueError, TypeError):
      return None

    def run(input_image, input_scales, input_max_feature_num, input_abs_thres, **unused):
      return dict(
        zip(outputs, pruned(input_image, input_scales, input_max_feature_num, input_abs_thres))
      )

    return run

  def select(
    self,
    image: np.ndarray,
    levels: list[tuple[float, tuple[float, float], tuple[int, int]]],
    base_factor: float,
    score_threshold: float,
    max_feature_num: int,
    global_scales_ind: list[int] | None = None,
  ) -> SelectedFeatures:
    """Selected raw features for the pyramid ``levels`` of delf_ret.extract.pyramid_levels.

    global_scales_ind: for a DELG model, the positions in ``levels`` its global output
    is computed at (all levels when None or empty; positions past the levels are
    dropped); the global output itself is dropped (see :meth:`select_with_global`).
    """
    if self.official is not None:
      positions = [i for i in global_scales_ind or () if 0 <= i < len(levels)]
      return self._select_official(
        image, levels, base_factor, score_threshold, max_feature_num, positions
      )[0]
    totals = np.array([scale * base_factor for scale, _, _ in levels], np.float32)
    outputs = self.signature(
      image=tf.constant(image, tf.uint8),
      scales=tf.constant(totals),
      score_threshold=tf.constant(score_threshold, tf.float32),
      max_feature_num=tf.constant(max_feature_num, tf.int32),
    )
    returned = _checked_outputs(
      self.path,
      {name: outputs[name].numpy() for name in ("locations", "scales", "scores", "descriptors")},
      "locations",
      totals,
    )
    level_of_total = {float(total): scale for total, (scale, _, _) in zip(totals, levels)}
    return SelectedFeatures(
      locations=returned["locations"],
      scales=np.array([level_of_total[float(s)] for s in returned["scales"]], np.float32),
      descriptors=returned["descriptors"],
      attention=returned["scores"],
    )

  def select_with_global(
    self,
    image: np.ndarray,
    levels: list[tuple[float, tuple[float, float], tuple[int, int]]],
    base_factor: float,
    score_threshold: float,
    max_feature_num: int,
    global_positions: list[int],
  ) -> tuple[SelectedFeatures, np.ndarray | None]:
    """:meth:`select` and, for a DELG model (``has_global_output``), its raw global
    descriptors float32 [G, D] at the levels of ``global_positions`` (positions in
    ``levels``, at least one), one row per position in increasing order; None otherwise."""
    if not global_positions or not all(0 <= i < len(levels) for i in global_positions):
      raise ValueError(f"global positions {global_positions} must index the {len(levels)} levels")
    if self.official is None:
      return self.select(image, levels, base_factor, score_threshold, max_feature_num), None
    return self._select_official(
      image, levels, base_factor, score_threshold, max_feature_num, sorted(global_positions)
    )

  def _select_official(
    self, image, levels, base_factor, score_threshold, max_feature_num, global_positions
  ) -> tuple[SelectedFeatures, np.ndarray | None]:
    """The official extractor's steps: shrink to max_image_size, run, box centres back; the
    DELG global output too (None for a model without one)."""
    height, width = image.shape[:2]
    resized_image = image
    ratio = np.ones(2)
    if base_factor != 1.0:
      size = (max(1, int(round(height * base_factor))), max(1, int(round(width * base_factor))))
      resized_image = tf.cast(tf.round(resize_image(image, size)), tf.uint8).numpy()
      ratio = np.array([size[0] / height, size[1] / width])
    inputs = {
      "input_image": tf.constant(resized_image, tf.uint8),
      "input_scales": tf.constant([scale for scale, _, _ in levels], tf.float32),
      "input_max_feature_num": tf.constant(max_feature_num, tf.int32),
      "input_abs_thres": tf.constant(score_threshold, tf.float32),
    }
    if self.official and GLOBAL_INPUT in self.official:
      inputs[GLOBAL_INPUT] = tf.constant(list(global_positions or range(len(levels))), tf.int32)
    outputs = self.signature(**inputs)
    missing = {"boxes", "features", "scales", "scores"} - set(outputs)
    if missing:
      raise ModelFileError(f"{self.path}: the serving signature lacks outputs {sorted(missing)}")
    returned = _checked_outputs(
      self.path,
      {name: outputs[name].numpy() for name in ("boxes", "features", "scales", "scores")},
      "boxes",
      np.array([scale for scale, _, _ in levels], np.float32),
    )
    boxes = returned["boxes"]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0 / ratio  # (y, x) in original pixels.
    selected = SelectedFeatures(
      locations=centres.astype(np.float32),
      scales=returned["scales"],
      descriptors=returned["features"],
      attention=returned["scores"],
    )
    if not self._global_output:
      return selected, None
    count = len(global_positions or range(len(levels)))
    return selected, _checked_global(self.path, outputs[GLOBAL_OUTPUT].numpy(), count)


# Width of each output's rows: boxes/locations hold (y, x) corners or centres, descriptors
# any width (None), scales and scores one value (scores may come as [N, 1]).
_OUTPUT_WIDTHS = {"boxes": 4, "locations": 2, "features": None, "descriptors": None}


def _checked_outputs(
  path, outputs: dict[str, np.ndarray], rows_of: str, requested: np.ndarray
) -> dict[str, np.ndarray]:
  """A SavedModel's outputs as float32 [N, ...] arrays, refused (ModelFileError naming the model)
  unless every output has the N rows of ``rows_of``, descriptors are [N, D] with D > 0 when N > 0,
  values are finite and every scale is one of the ``requested`` scales."""
  count = int(np.prod(outputs[rows_of].shape[:1])) if outputs[rows_of].ndim else -1
  checked = {}
  for name, value in outputs.items():
    value = np.asarray(value, np.float32)
    width = _OUTPUT_WIDTHS.get(name, 1)
    if name in ("scales", "scores") and value.ndim == 2 and value.shape[1] == 1:
      value = value[:, 0]
    expected = (count,) if width == 1 else (count, width) if width else None
    if (
      value.shape[:1] != (count,)
      or (expected and value.shape != expected)
      or (width is None and (value.ndim != 2 or (count and not value.shape[1])))
    ):
      raise ModelFileError(
        f"{path}: the model returned {name} of shape {list(value.shape)} for "
        f"{count} {rows_of}; every output must have one row per feature"
        + (f" of {width} values" if width and width > 1 else "")
      )
    if not np.all(np.isfinite(value)):
      raise ModelFileError(f"{path}: the model returned NaN or infinite {name}")
    checked[name] = value
  unrequested = sorted({float(s) for s in checked["scales"]} - {float(s) for s in requested})
  if unrequested:
    raise ModelFileError(
      f"{path}: the model returned features of scales {unrequested[:5]}, which were not "
      f"requested (requested: {[round(float(s), 4) for s in requested]})"
    )
  return checked


def _checked_global(path, value: np.ndarray, count: int) -> np.ndarray:
  """A DELG model's global output as float32 [count, D] (a single [D] row is taken as [1, D]);
  ModelFileError naming the model unless it has one row per global scale, D > 0, finite."""
  value = np.asarray(value, np.float32)
  if value.ndim == 1 and count == 1:
    value = value[None]
  if value.ndim != 2 or value.shape[0] != count or not value.shape[1]:
    raise ModelFileError(
      f"{path}: the model returned global_descriptors of shape {list(value.shape)} for "
      f"{count} global scales; expected one row per scale"
    )
  if not np.all(np.isfinite(value)):
    raise ModelFileError(f"{path}: the model returned NaN or infinite global_descriptors")
  return value

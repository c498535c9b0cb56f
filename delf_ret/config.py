"""The extraction config: a ``DelfConfig`` protobuf parsed from a .pbtxt file.

One config object is parsed once and passed down; nothing reads global state.
Relative paths in the file (model, PCA files) are resolved against the folder
holding the config file. The defaults of every setting are the .proto
defaults (protos/delf_config.proto); library code takes them from the parsed
message, never restates them. Configs shipped with the package (the demo's,
the example with the published defaults) are package data in delf_ret/configs:
``packaged_config_path(name)``.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import pathlib
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Iterator

from absl import logging
from google.protobuf import descriptor as descriptor_lib
from google.protobuf import text_format

from delf_ret.errors import DelfRetError
from delf_ret.errors import read_utf8_text
from delf_ret.protos import delf_config_pb2
from delf_ret.protos import delf_train_config_pb2

DelfConfig = delf_config_pb2.DelfConfig
DelfRetrievalConfig = delf_config_pb2.DelfRetrievalConfig
DelfTrainingConfig = delf_train_config_pb2.DelfTrainingConfig

# Configs shipped in delf_ret/configs (package data).
DEMO_CONFIG = "delf_demo.pbtxt"
EXAMPLE_CONFIG = "delf_config_example.pbtxt"


class ConfigError(DelfRetError):
  """A config file or override is invalid."""


def _parse_into(text: str, message, label: str) -> None:
  """Parses pbtxt ``text`` into ``message``; a syntax error becomes 'invalid <label>: ...'."""
  try:
    text_format.Parse(text, message)
  except text_format.ParseError as error:
    raise ConfigError(f"invalid {label}: {error}") from None


def _read_text(path: pathlib.Path, label: str) -> str:
  """The UTF-8 text of a config file; ConfigError naming it when it is not text."""
  return read_utf8_text(path, ConfigError, f"{label} {path}")


def _existing_file(path: str | os.PathLike, label: str) -> pathlib.Path:
  """``path`` as a Path; raises '<label> file not found' when it is not a file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"{label} file not found: {path}")
  return path


def _require_positive(message, names: Iterable[str], prefix: str) -> None:
  """Raises '<prefix><name> must be positive' for the first named field that is <= 0."""
  for name in names:
    if getattr(message, name) <= 0:
      raise ConfigError(f"{prefix}{name} must be positive, got {getattr(message, name)}")


def packaged_config_path(name: str) -> pathlib.Path:
  """The path of a config shipped with the package (e.g. DEMO_CONFIG, EXAMPLE_CONFIG).

  Raises ConfigError naming the available configs when there is no such file.
  """
  folder = importlib.resources.files("delf_ret") / "configs"
  path = pathlib.Path(str(folder / name))
  if not path.is_file():
    available = sorted(item.name for item in folder.iterdir() if item.name.endswith(".pbtxt"))
    raise ConfigError(f"no packaged config {name!r}; the package holds {available}")
  return path


def parse_config_text(text: str, base_dir: str | os.PathLike | None = None) -> DelfConfig:
  """Parses pbtxt text; relative paths are resolved against ``base_dir``."""
  config = DelfConfig()
  _parse_into(text, config, "config")
  if base_dir is not None:
    _resolve_paths(config, pathlib.Path(base_dir))
  return config


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> DelfConfig:
  """Reads a .pbtxt config, applies ``field.path=value`` overrides and validates it."""
  path = _existing_file(path, "config")
  config = parse_config_text(_read_text(path, "config"), base_dir=path.parent)
  apply_overrides(config, overrides)
  validate(config)
  for message in unsupported_settings(config):
    logging.warning(f"{path}: {message}")
  return config


def unsupported_settings(config: DelfConfig) -> list[str]:
  """One line per official-config setting that delf-ret does not act on, naming the field.

  Only settings that would make the official code behave differently are
  listed (e.g. iou_threshold 1.0, no suppression, is what delf-ret does anyway).
  """
  local = config.delf_local_config
  lines = []
  if local.iou_threshold < 1.0:
    lines.append(
      f"delf_local_config.iou_threshold {local.iou_threshold:g} is ignored: "
      f"non-maximum suppression is not implemented, every selected feature is kept"
    )
  if local.use_resized_coordinates:
    lines.append(
      "delf_local_config.use_resized_coordinates is ignored: keypoints are always "
      "in pixels of the original image"
    )
  if local.layer_name in OFFICIAL_LAYER_NAMES:
    lines.append(
      f"delf_local_config.layer_name {local.layer_name!r} is read as "
      f"{OFFICIAL_LAYER_NAMES[local.layer_name]!r}: the same ResNet50 stage, which "
      f"delf-ret's network ends at stride 16 (the official TF1 one at 32)"
    )
  if config.use_square_images:
    lines.append("use_square_images is ignored: images keep their aspect ratio")
  if not config.use_local_features:
    lines.append("use_local_features false is ignored: delf-ret extracts local features")
  if (
    config.use_global_features or config.HasField("delf_global_config")
  ) and config.retrieval_config.first_stage != "global":
    lines.append(
      "use_global_features / delf_global_config: extract_features writes global "
      "descriptors (.delg_global), but every tool ranks with local features unless "
      'retrieval_config.first_stage is "global"'
    )
  return lines


_PATH_FIELDS = (
  "model_path",
  "delf_local_config.pca_parameters.mean_path",
  "delf_local_config.pca_parameters.projection_matrix_path",
  "delf_local_config.pca_parameters.pca_variances_path",
  "delf_global_config.pca_parameters.mean_path",
  "delf_global_config.pca_parameters.projection_matrix_path",
  "delf_global_config.pca_parameters.pca_variances_path",
)


def _resolve_paths(config: DelfConfig, base_dir: pathlib.Path) -> None:
  for dotted in _PATH_FIELDS:
    *parents, leaf = dotted.split(".")
    message = config
    for name in parents:
      if not message.HasField(name):
        break
      message = getattr(message, name)
    else:
      value = getattr(message, leaf)
      if value and not os.path.isabs(value):
        setattr(message, leaf, str(base_dir / value))


def apply_overrides(config: DelfConfig, overrides: Iterable[str]) -> None:
  """Sets single fields from strings like ``delf_local_config.max_feature_num=500``.

  A repeated field takes a comma-separated list (``image_scales=0.5,1.0``).
  Path values are taken as given (relative to the working directory).
  """
  for override in overrides:
    name, sep, value = override.partition("=")
    if not sep:
      raise ConfigError(f"override {override!r} is not of the form field.path=value")
    *parents, leaf = name.strip().split(".")
    message = config
    for part in parents:
      field = message.DESCRIPTOR.fields_by_name.get(part)
      if field is None or field.message_type is None:
        raise ConfigError(f"override {override!r}: no message field {part!r}")
      message = getattr(message, part)
    field = message.DESCRIPTOR.fields_by_name.get(leaf)
    if field is None:
      raise ConfigError(
        f"override {override!r}: unknown field {leaf!r} in {message.DESCRIPTOR.name}"
      )
    try:
      if field.is_repeated:
        container = getattr(message, leaf)
        del container[:]
        container.extend(_convert(field, item) for item in value.split(",") if item.strip())
      else:
        setattr(message, leaf, _convert(field, value))
    except ValueError as error:
      raise ConfigError(f"override {override!r}: {error}") from None


def _convert(field: descriptor_lib.FieldDescriptor, text: str):
  text = text.strip()
  kind = field.cpp_type
  if kind == descriptor_lib.FieldDescriptor.CPPTYPE_BOOL:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"not a boolean: {text!r}")
  if kind in (
    descriptor_lib.FieldDescriptor.CPPTYPE_FLOAT,
    descriptor_lib.FieldDescriptor.CPPTYPE_DOUBLE,
  ):
    return float(text)
  if kind in (
    descriptor_lib.FieldDescriptor.CPPTYPE_INT32,
    descriptor_lib.FieldDescriptor.CPPTYPE_INT64,
    descriptor_lib.FieldDescriptor.CPPTYPE_UINT32,
    descriptor_lib.FieldDescriptor.CPPTYPE_UINT64,
  ):
    return int(text)
  if kind == descriptor_lib.FieldDescriptor.CPPTYPE_STRING:
    return text
  raise ValueError(f"field {field.name} cannot be set from the command line")


# Pixels of one pyramid level, the network's input. ResNet50 to conv4 takes about 0.22 GB and
# 1.5 s per megapixel on 2 CPU cores (measured: 1 MP 1.5 s, 4.2 MP 6 s and +0.9 GB peak), so a
# 16 MP level (4096 x 4096) needs about 4 GB and 25 s, and a whole pyramid of such levels fits
# 24 GB; the default config's largest level is 2048 x 2048 (max_image_size 1024, scale 2).
# Levels of 60-90 MP used to abort the process after minutes.
MAX_LEVEL_PIXELS = 4096 * 4096


def _check_pyramid_bound(config: DelfConfig) -> None:
  """ConfigError when max_image_size (or min_image_size) and image_scales make a level, of a
  square image, larger than MAX_LEVEL_PIXELS whatever the image."""
  side = max(config.max_image_size, config.min_image_size)
  if config.max_image_size <= 0 or not config.image_scales:
    return  # Unbounded images: delf_ret.extract.extractor.pyramid_levels checks each image.
  largest = max(config.image_scales)
  level = round(side * largest)
  if level * level > MAX_LEVEL_PIXELS:
    raise ConfigError(
      f"image_scales {largest:g} with max_image_size {config.max_image_size} makes pyramid "
      f"levels of up to {level}x{level} pixels, more than the {MAX_LEVEL_PIXELS / 1e6:.1f} "
      f"megapixels one level may have (about 4 GB of memory); lower image_scales or "
      f"max_image_size"
    )


# Official DELF layer names -> the delf-ret layer of the same network stage.
OFFICIAL_LAYER_NAMES = {"resnet_v1_50/block3": "conv4_block6_out"}


def _non_finite_fields(message, prefix: str = "") -> Iterator[tuple[str, float]]:
  """(field path, value) of every float field of ``message`` (set or default) that is NaN or inf."""
  for field in message.DESCRIPTOR.fields:
    value = getattr(message, field.name)
    path = f"{prefix}{field.name}"
    if field.type == descriptor_lib.FieldDescriptor.TYPE_MESSAGE:
      if not field.is_repeated:
        yield from _non_finite_fields(value, f"{path}.")
    elif field.type in (
      descriptor_lib.FieldDescriptor.TYPE_FLOAT,
      descriptor_lib.FieldDescriptor.TYPE_DOUBLE,
    ):
      values = list(value) if field.is_repeated else [value]
      yield from ((path, v) for v in values if not math.isfinite(v))


def validate(config: DelfConfig) -> None:
  """Raises ConfigError (naming the field) for values extraction or retrieval cannot work with."""
  for path, value in _non_finite_fields(config):
    raise ConfigError(f"{path} must be a finite number, got {value}")
  for name in ("max_image_size", "min_image_size"):
    if getattr(config, name) != -1 and getattr(config, name) <= 0:
      raise ConfigError(f"{name} must be positive or -1 (off), got {getattr(config, name)}")
  if config.min_scaled_side < 1 or config.max_image_pixels < 1:
    raise ConfigError(
      f"min_scaled_side and max_image_pixels must be positive, got "
      f"{config.min_scaled_side} and {config.max_image_pixels}"
    )
  if not 0.0 <= config.delf_local_config.iou_threshold <= 1.0:
    raise ConfigError(
      f"delf_local_config.iou_threshold must be in [0, 1], got "
      f"{config.delf_local_config.iou_threshold}"
    )
  if not config.image_scales:
    raise ConfigError("image_scales is empty: give at least one scale")
  if any(scale <= 0 for scale in config.image_scales):
    raise ConfigError(f"image_scales must be positive, got {list(config.image_scales)}")
  _check_pyramid_bound(config)
  local = config.delf_local_config
  if local.max_feature_num <= 0:
    raise ConfigError(f"max_feature_num must be positive, got {local.max_feature_num}")
  if local.use_pca:
    pca = local.pca_parameters
    if not (pca.mean_path and pca.projection_matrix_path):
      raise ConfigError(
        "use_pca is true but pca_parameters.mean_path / projection_matrix_path "
        "are not set (learn them with learn_pca)"
      )
    if pca.pca_dim <= 0:
      raise ConfigError(f"pca_dim must be positive, got {pca.pca_dim}")
    if pca.use_whitening and not pca.pca_variances_path:
      raise ConfigError("use_whitening is true but pca_parameters.pca_variances_path is not set")
  if 0 < config.max_image_size < config.min_image_size:
    raise ConfigError(
      f"max_image_size {config.max_image_size} < min_image_size {config.min_image_size}"
    )
  _validate_retrieval(config.retrieval_config)


# The values of retrieval_config.ransac_method, the one list of them: delf_ret.match.verify maps
# each to OpenCV's method flag of the same name upper-cased (usac_magsac: cv2.USAC_MAGSAC).
RANSAC_METHODS = ("ransac", "usac_default", "usac_accurate", "usac_magsac")

_CHOICES = {
  "index_type": ("flat", "ivfpq", "hnsw"),
  "vote_weighting": ("count", "similarity"),
  "ransac_transform": ("affine", "homography"),
  "ransac_backend": ("opencv", "skimage"),
  "ransac_method": RANSAC_METHODS,
  "coarse_quantizer": ("flat", "hnsw"),
}
# retrieval_config field -> (whether a value is usable, what it must be).
_LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
  "rerank_top_n": (lambda value: value >= 0, "not be negative"),
  "min_inliers": (lambda value: value >= 0, "not be negative"),
  "rerank_min_inliers": (lambda value: value >= 0, "not be negative"),
  "min_inlier_spread": (lambda value: 0.0 <= value <= 1.0, "be in [0, 1] (0: off)"),
}
_POSITIVE = (
  "nlist",
  "pq_m",
  "pq_nbits",
  "hnsw_m",
  "nprobe",
  "ef_search",
  "train_sample_size",
  "neighbors_per_descriptor",
  "ransac_max_trials",
  "ransac_residual_threshold",
  "match_distance_threshold",
)


# Nearest neighbours per query descriptor: faiss's GPU indexes answer at most 2048, votes
# beyond a few hundred neighbours are noise, and the search's result buffers (12 bytes per
# neighbour and query descriptor) stay at 25 MB for 1000 query descriptors.
MAX_NEIGHBORS_PER_DESCRIPTOR = 2048


def check_retrieval_value(name: str, value: str | float) -> None:
  """Raises ConfigError 'retrieval_config.<name> must ..., got <value>' when ``value`` is not
  one that field may hold (a choice of ``_CHOICES`` or a range of ``_LIMITS``).

  The one check of those fields: :func:`validate` runs it on a parsed config, and the stages
  that also take a value without a validated config (``RansacParams`` built directly, ``rerank``
  given a ``DelfRetrievalConfig`` made in code) run it on theirs.
  """
  if name in _CHOICES:
    if value not in _CHOICES[name]:
      raise ConfigError(f"retrieval_config.{name} must be one of {_CHOICES[name]}, got {value!r}")
    return
  usable, requirement = _LIMITS[name]
  if not usable(value):
    raise ConfigError(f"retrieval_config.{name} must {requirement}, got {value}")


def check_ransac_backend(backend: str, method: str) -> None:
  """Raises ConfigError when ``ransac_method`` is one the ``ransac_backend`` cannot run
  (scikit-image runs classic RANSAC only); both names already checked."""
  if backend == "skimage" and method != "ransac":
    raise ConfigError(
      f"retrieval_config.ransac_method {method!r} needs ransac_backend 'opencv' "
      "(scikit-image runs classic RANSAC only)"
    )


def _validate_retrieval(retrieval) -> None:
  for name in (*_CHOICES, *_LIMITS):
    check_retrieval_value(name, getattr(retrieval, name))
  check_ransac_backend(retrieval.ransac_backend, retrieval.ransac_method)
  _require_positive(retrieval, _POSITIVE, "retrieval_config.")
  if retrieval.neighbors_per_descriptor > MAX_NEIGHBORS_PER_DESCRIPTOR:
    raise ConfigError(
      f"retrieval_config.neighbors_per_descriptor must be at most "
      f"{MAX_NEIGHBORS_PER_DESCRIPTOR}, got {retrieval.neighbors_per_descriptor}"
    )
  if not 0.0 <= retrieval.match_ratio_threshold < 1.0:
    raise ConfigError(
      f"retrieval_config.match_ratio_threshold must be in [0, 1) (0: off), got "
      f"{retrieval.match_ratio_threshold}"
    )
  if not 0.0 < retrieval.ransac_stop_probability <= 1.0:
    raise ConfigError(
      f"retrieval_config.ransac_stop_probability must be in (0, 1], got "
      f"{retrieval.ransac_stop_probability}"
    )
  if retrieval.ransac_seed < 0:
    raise ConfigError(
      f"retrieval_config.ransac_seed must not be negative, got {retrieval.ransac_seed}"
    )
  if any(k <= 0 for k in retrieval.eval_ks):
    raise ConfigError(f"retrieval_config.eval_ks must be positive, got {list(retrieval.eval_ks)}")
  if retrieval.recognition_top_k < 1:
    raise ConfigError(
      f"retrieval_config.recognition_top_k must be at least 1, got {retrieval.recognition_top_k}"
    )
  if retrieval.recognition_min_score < 0:
    raise ConfigError(
      f"retrieval_config.recognition_min_score must not be negative, got "
      f"{retrieval.recognition_min_score}"
    )


def load_training_config(
  path: str | os.PathLike | None, overrides: Iterable[str] = ()
) -> DelfTrainingConfig:
  """Reads a DelfTrainingConfig .pbtxt (None: the published defaults), applies overrides and
  validates it (:func:`validate_training_config`)."""
  config = DelfTrainingConfig()
  source = "training config"
  if path is not None:
    path = _existing_file(path, "training config")
    source = f"training config {path}"
    _parse_into(_read_text(path, "training config"), config, source)
    weights = config.backbone_weights
    if weights not in ("imagenet", "random") and weights and not os.path.isabs(weights):
      config.backbone_weights = str(path.parent / weights)
  apply_overrides(config, overrides)
  validate_training_config(config, source)
  return config


_TRAINING_POSITIVE = (
  "batch_size",
  "image_size",
  "max_steps",
  "save_every",
  "max_checkpoints",
  "summary_every",
  "shuffle_buffer",
  "tuning_learning_rate",
  "attention_learning_rate",
)


def _selfsup_requirements(s) -> list[tuple[str, bool, str]]:
  """(field, whether its value is usable, what it must be) of the ``selfsup`` block."""
  return [
    ("pairs_per_batch", s.pairs_per_batch >= 1, "at least 1"),
    ("crop_size", s.crop_size >= 64 and s.crop_size % 16 == 0, "a multiple of 16, at least 64"),
    ("real_pair_fraction", 0.0 <= s.real_pair_fraction <= 1.0, "in [0, 1]"),
    ("learning_rate", s.learning_rate > 0, "positive"),
    ("max_steps", s.max_steps >= 1, "at least 1"),
    ("warmup_steps", 0 <= s.warmup_steps < s.max_steps, "in [0, selfsup.max_steps)"),
    ("temperature", s.temperature > 0, "positive"),
    ("attention_loss_weight", s.attention_loss_weight >= 0, "at least 0"),
    ("photo_max_side", s.photo_max_side >= s.crop_size, "at least selfsup.crop_size"),
    (
      "min_photo_scale",
      0 < s.min_photo_scale <= s.max_photo_scale,
      "in (0, selfsup.max_photo_scale]",
    ),
    ("min_zoom", 0 < s.min_zoom <= s.max_zoom, "in (0, selfsup.max_zoom]"),
    ("max_pair_gap", s.max_pair_gap >= 0, "at least 0"),
    ("min_pair_matches", s.min_pair_matches >= 1, "at least 1"),
    ("negative_exclusion_radius", s.negative_exclusion_radius >= 0, "at least 0"),
  ]


def validate_training_config(config: DelfTrainingConfig, source: str = "training config") -> None:
  """Raises ConfigError '<source>: <field> must be ..., got <value>' for the first value
  training cannot run with (both stages' fields and the ``selfsup`` block)."""
  for path, value in _non_finite_fields(config):
    raise ConfigError(f"{source}: {path} must be a finite number, got {value}")
  _require_positive(config, _TRAINING_POSITIVE, f"{source}: ")
  if config.image_size < 32:
    raise ConfigError(f"{source}: image_size must be at least 32, got {config.image_size}")
  if config.attention_max_steps < 0:
    raise ConfigError(
      f"{source}: attention_max_steps must be at least 0, got {config.attention_max_steps}"
    )
  if not 0 <= config.tuning_frozen_stages <= 3:
    raise ConfigError(
      f"{source}: tuning_frozen_stages must be in [0, 3], got {config.tuning_frozen_stages}"
    )
  if not 0.0 < config.min_crop_area <= 1.0:
    raise ConfigError(f"{source}: min_crop_area must be in (0, 1], got {config.min_crop_area}")
  for name, ok, requirement in _selfsup_requirements(config.selfsup):
    if not ok:
      raise ConfigError(
        f"{source}: selfsup.{name} must be {requirement}, got {getattr(config.selfsup, name)}"
      )


def to_text(config: DelfConfig) -> str:
  """The config as pbtxt text."""
  return text_format.MessageToString(config)

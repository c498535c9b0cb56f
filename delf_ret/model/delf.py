"""DELF model: ResNet50 cut at conv4_block6_out plus an attention head.

Input images are float32 [B, H, W, 3], RGB, values in [0, 255]; the model
applies the ResNet50 ("caffe") preprocessing itself. Feature maps have stride 16.
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import keras
import numpy as np
import tensorflow as tf

from delf_ret.errors import DelfRetError
from delf_ret.errors import ModelFileError
from delf_ret.model.compact import read_compact_weights

BACKBONE_LAYER = "conv4_block6_out"
BACKBONE_CHANNELS = 1024
ATTENTION_HIDDEN = 512
# ResNet50 "caffe" preprocessing: BGR channel order, ImageNet mean subtracted.
_BGR_MEAN = (103.939, 116.779, 123.68)


class BackboneWeightsError(DelfRetError):
  """Backbone weights could not be loaded."""


def build_backbone(weights: str | None = None) -> keras.Model:
  """ResNet50 cut at conv4_block6_out (1024 channels, stride 16).

  Args:
    weights: None (random initialisation), "imagenet" (standard Keras weight
      loading: the Keras cache or a download), or a path to a local ResNet50
      weights file (.h5 / .weights.h5, without top).
  """
  if weights not in (None, "imagenet") and not pathlib.Path(weights).is_file():
    raise BackboneWeightsError(f"backbone weights file not found: {weights}")
  try:
    resnet = keras.applications.ResNet50(
      include_top=False, weights=weights, input_shape=(None, None, 3)
    )
  except Exception as error:  # Keras raises several types for download/format problems.
    where = "the Keras cache (~/.keras/models) or the network" if weights == "imagenet" else weights
    raise BackboneWeightsError(
      f"could not load ResNet50 weights {weights!r} from {where}: {error}"
    ) from error
  return keras.Model(resnet.input, resnet.get_layer(BACKBONE_LAYER).output, name="backbone")


def is_delf_model_path(weights: str | os.PathLike) -> bool:
  """Whether a backbone_weights value names a DELF model file (.npz compact weights or
  .keras) whose backbone initialises a new model, rather than ResNet50 weights."""
  return pathlib.Path(weights).suffix in (".npz", ".keras")


def caffe_preprocess(images: tf.Tensor) -> tf.Tensor:
  """RGB [0, 255] -> BGR minus ImageNet mean, as keras.applications.resnet50 expects."""
  return images[..., ::-1] - tf.constant(_BGR_MEAN, dtype=images.dtype)


@keras.saving.register_keras_serializable(package="delf_ret")
class DelfModel(keras.Model):
  """Backbone + attention head + tuning and attention classifiers.

  Outputs of ``call`` (a dict):
    features: [B, h, w, 1024] conv4 feature map.
    attention: [B, h, w] attention scores (softplus, >= 0).
    tuning_logits: [B, num_classes] from globally average-pooled features.
    attention_logits: [B, num_classes] from attention-weighted pooled,
      channel-L2-normalised features.

  backbone_weights: see :func:`build_backbone`; or a DELF model file (.npz, .keras)
  whose backbone is copied (the heads start freshly initialised).
  """

  def __init__(
    self,
    num_classes: int = 1,
    backbone_weights: str | None = None,
    seed: int | None = None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if seed is not None:
      keras.utils.set_random_seed(seed)
    self.num_classes = int(num_classes)
    from_delf = backbone_weights is not None and is_delf_model_path(backbone_weights)
    self.backbone = build_backbone(None if from_delf else backbone_weights)
    self.attention_conv1 = keras.layers.Conv2D(ATTENTION_HIDDEN, 1, name="attention_conv1")
    self.attention_bn = keras.layers.BatchNormalization(name="attention_bn")
    self.attention_conv2 = keras.layers.Conv2D(1, 1, name="attention_conv2")
    self.tuning_classifier = keras.layers.Dense(self.num_classes, name="tuning_classifier")
    self.attention_classifier = keras.layers.Dense(self.num_classes, name="attention_classifier")
    # Create every weight now so that saving/loading and weight surgery see them all.
    self(np.zeros((1, 32, 32, 3), np.float32), training=False)
    if from_delf:  # Last, so the heads start as in a model built without it.
      self.backbone.set_weights(load_delf_model(str(backbone_weights)).backbone.get_weights())

  def get_config(self) -> dict:
    config = super().get_config()
    config.update(num_classes=self.num_classes)
    return config

  @classmethod
  def from_config(cls, config: dict) -> "DelfModel":
    return cls(**config)

  def attention_logits(self, features: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Attention head before its softplus: conv4 features [B, h, w, 1024] -> [B, h, w]."""
    hidden = self.attention_conv1(features)
    hidden = tf.nn.relu(self.attention_bn(hidden, training=training))
    return tf.squeeze(self.attention_conv2(hidden), axis=-1)

  def attention_scores(self, features: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Attention head on conv4 features [B, h, w, 1024] -> scores [B, h, w] (softplus, >= 0)."""
    return tf.nn.softplus(self.attention_logits(features, training=training))

  def feature_maps(self, images: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """images [B, H, W, 3] RGB 0..255 -> (features [B, h, w, 1024], attention [B, h, w])."""
    features = self.backbone(caffe_preprocess(tf.cast(images, tf.float32)), training=training)
    return features, self.attention_scores(features, training=training)

  def call(self, images, training=False):
    features, attention = self.feature_maps(images, training=training)
    pooled = tf.reduce_mean(features, axis=[1, 2])
    normalized = tf.math.l2_normalize(features, axis=-1)
    attended = tf.reduce_mean(normalized * attention[..., None], axis=[1, 2])
    return {
      "features": features,
      "attention": attention,
      "tuning_logits": self.tuning_classifier(pooled),
      "attention_logits": self.attention_classifier(attended),
    }


def save_delf_model(model: DelfModel, path: str | os.PathLike) -> None:
  """Saves the whole model (architecture + weights) to a .keras file, atomically."""
  path = pathlib.Path(path)
  if path.suffix != ".keras":
    raise ModelFileError(f"DELF checkpoints are .keras files, got {path}")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp_path = path.with_name(f".{path.stem}.tmp.keras")
  try:
    model.save(tmp_path)
    os.replace(tmp_path, path)
  finally:
    tmp_path.unlink(missing_ok=True)


def load_delf_model(path: str | os.PathLike) -> DelfModel:
  """Loads a model written by :func:`save_delf_model` (.keras) or compact weights (.npz)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ModelFileError(f"DELF model file not found: {path}")
  if path.suffix == ".npz":
    weights = read_compact_weights(path)
    model = DelfModel(num_classes=weights.num_classes)
    model.set_weights(weights.values_for(model.weights))
    return model
  try:
    model = keras.models.load_model(path, compile=False)
  except (OSError, ValueError, TypeError, zipfile.BadZipFile) as error:
    raise ModelFileError(f"{path}: not a readable DELF model ({error})") from None
  if not isinstance(model, DelfModel):
    raise ModelFileError(f"{path} holds a {type(model).__name__}, not a DELF model")
  return model

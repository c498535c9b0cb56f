"""Running the DELF network on one pyramid level: eager baseline and compiled graph.

Both back-ends map (image uint8 [H, W, 3], target size (h, w)) to
(features float32 [h', w', 1024], attention float32 [h', w']) and agree to
float rounding. The compiled one folds every BatchNormalization into the
convolution before it (inference only), so the graph is conv + bias (+ add)
+ relu, which TensorFlow's graph optimiser fuses into single oneDNN kernels,
and traces one shape-generic tf.function, so image size changes do not retrace.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from delf_ret.model.delf import DelfModel
from delf_ret.model.delf import caffe_preprocess

LevelFunction = Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray]]


def resize_image(image: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
  """Bilinear, antialiased resize of uint8/float [H, W, 3] to float32 [h, w, 3]."""
  return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)


def eager_level_function(model: DelfModel) -> LevelFunction:
  """Baseline: one eager model call per level, no graph compilation."""

  def run(image: np.ndarray, size: tuple[int, int]):
    resized = resize_image(image, size)[None]
    features, attention = model.feature_maps(resized, training=False)
    return features[0].numpy(), attention[0].numpy()

  return run


def _fold(kernel: np.ndarray, bias: np.ndarray | None, bn: keras.layers.BatchNormalization):
  """Folds an inference BatchNormalization into the preceding conv's kernel and bias."""
  gamma = bn.gamma.numpy() if bn.scale else 1.0
  beta = bn.beta.numpy() if bn.center else 0.0
  multiplier = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
  bias = np.zeros(kernel.shape[-1], np.float32) if bias is None else bias
  return (
    (kernel * multiplier).astype(np.float32),
    ((bias - bn.moving_mean.numpy()) * multiplier + beta).astype(np.float32),
  )


class _Passthrough(keras.layers.Layer):
  """Stands in for a BatchNormalization folded into its convolution."""

  def call(self, inputs, **unused_kwargs):
    return inputs


def fold_backbone(backbone: keras.Model) -> keras.Model:
  """Clones a functional backbone with each Conv2D -> BatchNormalization pair folded."""
  conv_of_bn = {}
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      producer = layer._inbound_nodes[0].parent_nodes[0].operation
      if isinstance(producer, keras.layers.Conv2D) and len(producer._outbound_nodes) == 1:
        conv_of_bn[layer.name] = producer
  folded_convs = {conv.name for conv in conv_of_bn.values()}

  def clone_layer(layer):
    if layer.name in conv_of_bn:
      return _Passthrough(name=layer.name)
    if layer.name in folded_convs:
      config = layer.get_config()
      config["use_bias"] = True
      return keras.layers.Conv2D.from_config(config)
    return layer.__class__.from_config(layer.get_config())

  folded = keras.models.clone_model(backbone, clone_function=clone_layer)
  bn_of_conv = {conv.name: backbone.get_layer(bn_name) for bn_name, conv in conv_of_bn.items()}
  for layer in backbone.layers:
    if not layer.weights or layer.name in conv_of_bn:
      continue
    target = folded.get_layer(layer.name)
    if layer.name in bn_of_conv:
      bias = layer.bias.numpy() if layer.use_bias else None
      target.set_weights(list(_fold(layer.kernel.numpy(), bias, bn_of_conv[layer.name])))
    else:
      target.set_weights(layer.get_weights())
  return folded


def compiled_level_function(model: DelfModel) -> LevelFunction:
  """Fast path: BN-folded backbone and attention head in one shape-generic tf.function."""
  backbone = fold_backbone(model.backbone)
  kernel1, bias1 = _fold(
    model.attention_conv1.kernel.numpy(), model.attention_conv1.bias.numpy(), model.attention_bn
  )
  kernel1 = tf.constant(kernel1[0, 0])
  bias1 = tf.constant(bias1)
  kernel2 = tf.constant(model.attention_conv2.kernel.numpy()[0, 0])
  bias2 = tf.constant(model.attention_conv2.bias.numpy())

  @tf.function(
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)]
  )
  def run_graph(image, size):
    resized = resize_image(image, size)[None]
    features = backbone(caffe_preprocess(resized), training=False)[0]
    hidden = tf.nn.relu(tf.tensordot(features, kernel1, axes=1) + bias1)
    attention = tf.nn.softplus(tf.tensordot(hidden, kernel2, axes=1) + bias2)[..., 0]
    return features, attention

  def run(image: np.ndarray, size: tuple[int, int]):
    features, attention = run_graph(
      tf.convert_to_tensor(image, tf.uint8), tf.constant(size, tf.int32)
    )
    return features.numpy(), attention.numpy()

  return run


BACKENDS = {"eager": eager_level_function, "compiled": compiled_level_function}

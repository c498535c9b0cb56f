"""tf.data input pipeline over the TFRecord shards written by delf_ret.train.gldv2.

Training: shards in a seeded shuffled order, records shuffled in a buffer,
repeated forever; each image gets a random resized crop (area min_crop_area-100%, aspect
3/4-4/3; DELF's 5% by default) to ``image_size`` x ``image_size``, a horizontal flip with
probability 1/2 and colour jitter (brightness, contrast, saturation, hue).
Validation: the central square crop resized to ``image_size``, one pass.
Randomness comes from stateless ops keyed by (seed, element counter), so the
same seed gives the same batches, and an iterator saved in a checkpoint
resumes at the same position. Images are float32 RGB in [0, 255] (the model
preprocesses them itself); labels int32.
"""

from __future__ import annotations

import pathlib

import tensorflow as tf

_FEATURES = {
  "image/encoded": tf.io.FixedLenFeature([], tf.string),
  "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def shard_files(data_dir: str | pathlib.Path, split: str) -> list[str]:
  """The shard paths of one split ("train" or "validation"), sorted."""
  files = sorted(str(p) for p in pathlib.Path(data_dir).glob(f"{split}-*-of-*.tfrecord"))
  if not files:
    raise FileNotFoundError(f"no {split}-*.tfrecord shards in {data_dir}")
  return files


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Serialised Example -> (image uint8 [H, W, 3], label int32 [])."""
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  image = tf.io.decode_jpeg(parsed["image/encoded"], channels=3)
  return image, tf.cast(parsed["image/class/label"], tf.int32)


def augment(
  image: tf.Tensor, seed: tf.Tensor, image_size: int, min_crop_area: float = 0.05
) -> tf.Tensor:
  """Random resized crop (at least ``min_crop_area`` of the photo's area), flip and colour
  jitter; uint8 [H, W, 3] -> float32 [S, S, 3] in [0, 255]."""
  seeds = tf.random.experimental.stateless_split(seed, num=6)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seeds[0],
    min_object_covered=min_crop_area,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(min_crop_area, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  crop = tf.slice(image, begin, size)
  crop = tf.image.resize(crop, (image_size, image_size), method="bilinear") / 255.0
  crop = tf.image.stateless_random_flip_left_right(crop, seeds[1])
  crop = tf.image.stateless_random_brightness(crop, 0.2, seeds[2])
  crop = tf.image.stateless_random_contrast(crop, 0.8, 1.2, seeds[3])
  crop = tf.image.stateless_random_saturation(crop, 0.8, 1.2, seeds[4])
  crop = tf.image.stateless_random_hue(crop, 0.05, seeds[5])
  return tf.clip_by_value(crop, 0.0, 1.0) * 255.0


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Central square crop resized to [S, S, 3] float32 in [0, 255]."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
  crop = tf.slice(image, [top, left, 0], [side, side, 3])
  return tf.image.resize(crop, (image_size, image_size), method="bilinear")


def make_dataset(
  data_dir: str | pathlib.Path,
  split: str,
  batch_size: int,
  image_size: int = 321,
  training: bool = True,
  seed: int = 0,
  shuffle_buffer: int = 256,
  num_shards: int = 1,
  shard_index: int = 0,
  min_crop_area: float = 0.05,
) -> tf.data.Dataset:
  """Batches (images float32 [B, S, S, 3], labels int32 [B]) of one split.

  num_shards / shard_index: keep every num_shards-th record (one machine's share).
  min_crop_area: training crops cover at least this share of the photo (config field).
  """
  files = shard_files(data_dir, split)
  records = tf.data.Dataset.from_tensor_slices(files)
  if training:
    records = records.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
  records = records.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(4, len(files)),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  if num_shards > 1:
    records = records.shard(num_shards, shard_index)
  if training:
    records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    counted = tf.data.Dataset.zip((records, tf.data.Dataset.counter()))

    def train_example(serialized, counter):
      image, label = parse_example(serialized)
      seed_pair = tf.stack([tf.cast(seed, tf.int64), counter])
      return augment(image, seed_pair, image_size, min_crop_area), label

    examples = counted.map(train_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    examples = records.map(
      lambda serialized: (lambda image, label: (center_crop(image, image_size), label))(
        *parse_example(serialized)
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
  return examples.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

"""GLDv2 preparation (published layout -> TFRecord shards) and the tf.data input pipeline."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_gldv2_layout
from delf_ret.train import gldv2
from delf_ret.train.pipeline import make_dataset


def read_shards(folder, split):
  labels = {}
  for path in sorted(folder.glob(f"{split}-*.tfrecord")):
    for record in tf.data.TFRecordDataset(str(path)):
      example = tf.train.Example.FromString(record.numpy())
      feature = example.features.feature
      labels[feature["image/id"].bytes_list.value[0].decode()] = feature[
        "image/class/label"
      ].int64_list.value[0]
      assert tf.io.decode_jpeg(feature["image/encoded"].bytes_list.value[0]).shape[2] == 3
  return labels


def test_shards_hold_every_readable_image_with_its_label(tmp_path, shared_data):
  layout = write_gldv2_layout(tmp_path / "gldv2", shared_data, corrupt=True)
  out = tmp_path / "shards"
  lines = []
  failures = gldv2.prepare_gldv2(
    layout["csv"], layout["train"], out, num_shards=3, log=lines.append
  )
  assert [path.stem for path, _ in failures] == [layout["corrupt_id"]]
  assert any("ERROR" in line and layout["corrupt_id"] in line for line in lines)
  train, validation = read_shards(out, "train"), read_shards(out, "validation")
  assert len(list(out.glob("train-*-of-00003.tfrecord"))) == 3
  assert not set(train) & set(validation)
  assert len(train) + len(validation) == 17  # 17 readable photos, the corrupt one skipped.
  label_map = gldv2.read_label_map(out)
  assert sorted(label_map.values()) == list(range(len(label_map)))
  for image_id, label in {**train, **validation}.items():
    assert label_map[layout["landmark_of"][image_id]] == label
  # Stratified: round(0.2 n) of each landmark's images in validation: San Marco 5 -> 1,
  # London Bridge 4 -> 1, campus 2 + the corrupt one -> 1, the 2-image landmarks -> 0.
  info = json.loads((out / "split.json").read_text())
  assert (info["train_images"], info["validation_images"]) == (15, 3)
  validation_landmarks = sorted(layout["landmark_of"][i] for i in validation)
  # Landmark ids: campus 10 (with the corrupt image), London Bridge 20, San Marco 30.
  assert validation_landmarks in ([10, 20, 30], [20, 30])


def test_rerun_keeps_finished_shards_and_rejects_another_split(tmp_path, shared_data):
  layout = write_gldv2_layout(tmp_path / "gldv2", shared_data)
  out = tmp_path / "shards"
  gldv2.prepare_gldv2(layout["csv"], layout["train"], out, num_shards=2, log=lambda line: None)
  kept = out / "train-00000-of-00002.tfrecord"
  mtime = kept.stat().st_mtime_ns
  (out / "train-00001-of-00002.tfrecord").unlink()
  lines = []
  gldv2.prepare_gldv2(layout["csv"], layout["train"], out, num_shards=2, log=lines.append)
  assert kept.stat().st_mtime_ns == mtime
  assert any("train-00000-of-00002.tfrecord: exists, kept" in line for line in lines)
  assert (out / "train-00001-of-00002.tfrecord").is_file()
  with pytest.raises(gldv2.GldDataError, match="another split"):
    gldv2.prepare_gldv2(
      layout["csv"], layout["train"], out, num_shards=2, seed=5, log=lambda line: None
    )


def test_bad_csv(tmp_path):
  with pytest.raises(gldv2.GldDataError, match="not found"):
    gldv2.read_train_csv(tmp_path / "none.csv", tmp_path)
  (tmp_path / "a.csv").write_text("id,landmark\n1,2\n")
  with pytest.raises(gldv2.GldDataError, match="landmark_id,images"):
    gldv2.read_train_csv(tmp_path / "a.csv", tmp_path)
  (tmp_path / "b.csv").write_text("landmark_id,images\nx,abc\n")
  with pytest.raises(gldv2.GldDataError, match="not an integer"):
    gldv2.read_train_csv(tmp_path / "b.csv", tmp_path)


@pytest.mark.slow  # Decodes and augments real photos: several seconds.
def test_pipeline_is_deterministic_and_shaped(tmp_path, shared_data):
  layout = write_gldv2_layout(tmp_path / "gldv2", shared_data)
  out = tmp_path / "shards"
  gldv2.prepare_gldv2(layout["csv"], layout["train"], out, num_shards=2, log=lambda line: None)
  first = [b for b in make_dataset(out, "train", 4, image_size=48, seed=3).take(3)]
  again = [b for b in make_dataset(out, "train", 4, image_size=48, seed=3).take(3)]
  other = [b for b in make_dataset(out, "train", 4, image_size=48, seed=4).take(3)]
  for (images, labels), (images2, labels2) in zip(first, again):
    np.testing.assert_array_equal(images.numpy(), images2.numpy())
    np.testing.assert_array_equal(labels.numpy(), labels2.numpy())
  assert not all(np.array_equal(a[0].numpy(), b[0].numpy()) for a, b in zip(first, other))
  images, labels = first[0]
  assert images.shape == (4, 48, 48, 3) and images.dtype == tf.float32
  assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
  assert labels.dtype == tf.int32
  validation = list(make_dataset(out, "validation", 8, image_size=48, training=False))
  assert sum(int(labels.shape[0]) for _, labels in validation) == 2


def test_tfds_builder_reads_the_local_copy_with_the_same_split(tmp_path, shared_data):
  import tensorflow_datasets as tfds

  from delf_ret.train.tfds_gldv2 import Gldv2Clean

  layout = write_gldv2_layout(tmp_path / "gldv2", shared_data, corrupt=True)
  builder = Gldv2Clean(data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "gldv2"))
  )
  loaded = tfds.load("gldv2_clean", split="train", data_dir=str(tmp_path / "tfds"))
  train = {example["image_id"].numpy().decode(): int(example["label"]) for example in loaded}
  gldv2.prepare_gldv2(
    layout["csv"], layout["train"], tmp_path / "shards", num_shards=1, log=lambda line: None
  )
  assert train == read_shards(tmp_path / "shards", "train")
  example = next(iter(loaded))
  assert example["image"].shape[2] == 3 and example["image"].dtype == tf.uint8
  assert builder.info.splits["validation"].num_examples == len(
    read_shards(tmp_path / "shards", "validation")
  )

"""Your own labelled photos (a folder + a labels CSV) -> the shards the training stages read.

The folder is a small copy of the shared web photos of three landmarks (5 each),
one landmark with a single photo and one unlabelled photo: 17 rows after the header.
"""

import csv
import json
import shutil

import pytest
import tensorflow as tf

from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret.train import labelled
from delf_ret.train.gldv2 import GldDataError
from delf_ret.train.pipeline import make_dataset

LANDMARKS = ("colosseum_rome", "petra_jordan", "taj_mahal")


def photo_folder(root, shared_data, corrupt=False, header=("image", "label")):
  """Copies 5 photos of each of LANDMARKS, 1 of machu_picchu and 1 unlabelled into ``root``.

  Writes ``root/labels.csv`` with ``header`` (image column, label column, ...);
  returns {image path relative to root: label text ("" for no label)}.
  """
  with open(shared_data / "train_landmarks" / "labels.csv", newline="") as handle:
    web = [row for row in csv.DictReader(handle) if row["source"] == "web13"]
  wanted = {name: 5 for name in LANDMARKS} | {"machu_picchu": 1, "dome_of_the_rock": 1}
  rows = {}
  for row in web:
    name = row["landmark"]
    if wanted.get(name, 0) > 0:
      wanted[name] -= 1
      label = "" if name == "dome_of_the_rock" else name
      relative = f"{name}/photo{wanted[name]}.jpg"
      (root / name).mkdir(parents=True, exist_ok=True)
      shutil.copy(shared_data / "train_landmarks" / row["image"], root / relative)
      rows[relative] = label
  if corrupt:
    (root / "taj_mahal" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    rows["taj_mahal/broken.jpg"] = "taj_mahal"
  with open(root / "labels.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(header)
    writer.writerows([path, label, *["web"] * (len(header) - 2)] for path, label in rows.items())
  return rows


def labels_in_shards(folder, split):
  """{image id: label} of every record of one split's shards."""
  features = {
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
  }
  records = tf.data.TFRecordDataset(
    sorted(str(path) for path in folder.glob(f"{split}-*.tfrecord"))
  )
  parsed = records.map(lambda record: tf.io.parse_single_example(record, features))
  return {item["image/id"].numpy().decode(): int(item["image/class/label"]) for item in parsed}


def test_split_is_stratified_and_every_readable_photo_is_in_a_shard(tmp_path, shared_data):
  rows = photo_folder(tmp_path / "photos", shared_data, corrupt=True)
  out = tmp_path / "shards"
  lines = []
  failures = labelled.prepare_labelled_photos(
    tmp_path / "photos" / "labels.csv", out, num_shards=2, validation_share=0.4, log=lines.append
  )
  assert [path.name for path, _ in failures] == ["broken.jpg"]
  assert "1 rows without a label skipped" in lines
  assert "1 labels with fewer than 2 photos left out: machu_picchu (1)" in lines
  with open(out / "label_map.csv", newline="") as handle:
    label_map = {row["name"]: int(row["label"]) for row in csv.DictReader(handle)}
  assert label_map == {name: label for label, name in enumerate(LANDMARKS)}
  train, validation = labels_in_shards(out, "train"), labels_in_shards(out, "validation")
  assert len(list(out.glob("train-*-of-00002.tfrecord"))) == 2
  assert not set(train) & set(validation)
  for image_id, label in {**train, **validation}.items():
    assert label_map[rows[image_id]] == label
  # Stratified: round(0.4 n) of each label's photos in validation, the rest in train;
  # taj_mahal lists 6 (2 validation), one of which is the unreadable one.
  for name in LANDMARKS:
    in_train = sum(rows[i] == name for i in train)
    in_validation = sum(rows[i] == name for i in validation)
    if name == "taj_mahal":
      assert in_train + in_validation == 5 and in_validation in (1, 2)
    else:
      assert (in_train, in_validation) == (3, 2)
  info = json.loads((out / "split.json").read_text())
  assert (info["train_images"], info["validation_images"], info["num_classes"]) == (10, 6, 3)
  assert info["left_out_labels"] == {"machu_picchu": 1} and info["unlabelled_rows"] == 1


def test_the_tuning_stage_reads_the_shards_with_their_labels(tmp_path, shared_data):
  from delf_ret.train.trainer import num_classes_of

  rows = photo_folder(tmp_path / "photos", shared_data)
  out = tmp_path / "shards"
  labelled.prepare_labelled_photos(
    tmp_path / "photos" / "labels.csv", out, num_shards=2, min_images_per_label=1, log=print
  )
  assert num_classes_of(out) == 4  # machu_picchu's single photo is kept this time.
  images, labels = next(iter(make_dataset(out, "train", 4, image_size=32, seed=1)))
  assert images.shape == (4, 32, 32, 3) and set(labels.numpy()) <= {0, 1, 2, 3}
  validation = labels_in_shards(out, "validation")
  batches = list(make_dataset(out, "validation", 8, image_size=32, training=False))
  assert sorted(int(label) for _, batch in batches for label in batch) == sorted(
    validation.values()
  )
  assert {rows[image_id] for image_id in validation} == set(LANDMARKS)  # 1 of 5: round(0.2 n).


@pytest.mark.parametrize(
  "line, reason",
  [
    ("../outside.jpg,louvre", "image path '../outside.jpg' is outside the images folder"),
    ("petra_jordan/photo0.jpg,petra", "image petra_jordan/photo0.jpg is listed again"),
    ("petra_jordan/none.jpg,petra", "image not found: "),
    (",petra", "empty image path"),
    ("petra_jordan/photo0.jpg", "expected 2 fields"),
  ],
)
def test_a_bad_row_is_refused_with_its_line(tmp_path, shared_data, line, reason):
  photo_folder(tmp_path / "photos", shared_data)
  csv_path = tmp_path / "photos" / "labels.csv"
  text = csv_path.read_text()
  number = len(text.splitlines()) + 1  # The bad row, then a good one.
  csv_path.write_text(text + f"{line}\npetra_jordan/photo1.jpg,petra\n")
  with pytest.raises(GldDataError) as raised:
    labelled.read_labelled_csv(csv_path)
  assert str(raised.value).startswith(f"{csv_path}:{number}: {reason}")
  assert "\n" not in str(raised.value)


def test_missing_column_and_several_bad_rows(tmp_path, shared_data):
  photo_folder(tmp_path / "photos", shared_data, header=("image", "landmark", "source"))
  csv_path = tmp_path / "photos" / "labels.csv"
  with pytest.raises(GldDataError, match=r"labels.csv: no column 'label' in the header \(col"):
    labelled.read_labelled_csv(csv_path)
  assert len(labelled.read_labelled_csv(csv_path, label_column="landmark").photos) == 16
  csv_path.write_text(csv_path.read_text() + "a.jpg,x,web\nb.jpg,x,web\n")  # Lines 19, 20.
  with pytest.raises(GldDataError, match=r"labels.csv:19: image not found: .*\(and 1 more bad"):
    labelled.read_labelled_csv(csv_path, label_column="landmark")
  with pytest.raises(GldDataError, match="labels CSV not found"):
    labelled.read_labelled_csv(tmp_path / "none.csv")


def test_rerun_keeps_finished_shards_and_refuses_another_photo_list(tmp_path, shared_data):
  photo_folder(tmp_path / "photos", shared_data)
  csv_path, out = tmp_path / "photos" / "labels.csv", tmp_path / "shards"
  labelled.prepare_labelled_photos(csv_path, out, num_shards=2, log=lambda line: None)
  kept = out / "train-00000-of-00002.tfrecord"
  mtime = kept.stat().st_mtime_ns
  (out / "train-00001-of-00002.tfrecord").unlink()
  lines = []
  labelled.prepare_labelled_photos(csv_path, out, num_shards=2, log=lines.append)
  assert kept.stat().st_mtime_ns == mtime
  assert "train-00000-of-00002.tfrecord: exists, kept" in lines
  assert (out / "train-00001-of-00002.tfrecord").is_file()
  # Two photos swap labels: the same counts, another photo list.
  text = csv_path.read_text().replace("photo0.jpg,taj_mahal", "photo0.jpg,TAJ")
  text = text.replace("photo0.jpg,petra_jordan", "photo0.jpg,taj_mahal")
  csv_path.write_text(text.replace("photo0.jpg,TAJ", "photo0.jpg,petra_jordan"))
  with pytest.raises(GldDataError, match="another split"):
    labelled.prepare_labelled_photos(csv_path, out, num_shards=2, log=lambda line: None)
  with pytest.raises(GldDataError, match="min_images_per_label must be at least 1"):
    labelled.prepare_labelled_photos(csv_path, out, min_images_per_label=0)


@pytest.mark.slow  # Runs the console script twice.
def test_console_script_refuses_a_missing_column_then_skips_a_broken_photo(tmp_path, shared_data):
  photos, images = tmp_path / "photos", tmp_path / "photos" / "images"
  photo_folder(images, shared_data, corrupt=True, header=("image", "landmark", "source"))
  shutil.move(images / "labels.csv", photos / "labels.csv")
  script = installed_script("prepare_labelled_photos")
  out = tmp_path / "shards"
  common = [f"--labels_csv={photos / 'labels.csv'}", f"--output_dir={out}", "--num_shards=2"]
  refused = run_command([script, *common], timeout=300, env=tool_env())
  assert refused.returncode == 2
  assert "Traceback" not in refused.stderr
  assert refused.stderr.strip().splitlines()[-1] == (
    f"error: {photos / 'labels.csv'}: no column 'label' in the header "
    "(columns: image, landmark, source)"
  )
  result = run_command(
    [script, *common, f"--images_dir={images}", "--label_column=landmark"],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 1, result.stderr[-2000:]  # The unreadable photo.
  assert "1 photos (skipped) failed:" in result.stderr and "broken.jpg" in result.stderr
  assert "16 images of 3 classes: 13 train, 3 validation" in result.stdout
  # The shards are what the tuning stage reads: scripts/train_default_model.sh runs this
  # console script, then trains the tuning stage on its output (test_selfsup_training's
  # test_killed_recipe_resumes_each_stage_and_packages_a_loadable_model).
  assert len(list(out.glob("train-*-of-00002.tfrecord"))) == 2
  assert list(out.glob("validation-*.tfrecord"))


def test_no_shards_asked_for_is_refused(tmp_path, shared_data):
  photo_folder(tmp_path / "photos", shared_data)
  with pytest.raises(GldDataError, match="num_shards must be positive, got 0"):
    labelled.prepare_labelled_photos(
      tmp_path / "photos" / "labels.csv", tmp_path / "out", num_shards=0, log=lambda line: None
    )
  assert not (tmp_path / "out" / "split.json").exists()


def test_held_out_labels_go_wholly_to_validation(tmp_path, shared_data):
  rows = photo_folder(tmp_path / "photos", shared_data)
  out = tmp_path / "shards"
  labelled.prepare_labelled_photos(
    tmp_path / "photos" / "labels.csv", out, num_shards=2, holdout_labels=1, log=lambda line: None
  )
  info = json.loads((out / "split.json").read_text())
  [held] = info["holdout_labels"]
  assert held in LANDMARKS
  train, validation = labels_in_shards(out, "train"), labels_in_shards(out, "validation")
  assert not any(rows[image_id] == held for image_id in train)
  assert sum(rows[image_id] == held for image_id in validation) == 5
  # The other labels are split as before: round(0.2 * 5) = 1 photo each in validation.
  assert len(validation) == 5 + 2 and len(train) == 8
  refused = r"holdout_labels must be in \[0, 2\] for 3 labels \(3 with the mean number"
  with pytest.raises(GldDataError, match=refused):
    labelled.prepare_labelled_photos(
      tmp_path / "photos" / "labels.csv", tmp_path / "x", holdout_labels=3, log=lambda line: None
    )


def test_share_one_writes_a_validation_only_set(tmp_path, shared_data):
  rows = photo_folder(tmp_path / "photos", shared_data)
  out = tmp_path / "shards"
  csv_path = tmp_path / "photos" / "labels.csv"
  labelled.prepare_labelled_photos(csv_path, out, num_shards=4, validation_share=1.0, log=print)
  assert not list(out.glob("train-*")) and len(list(out.glob("validation-*.tfrecord"))) == 1
  validation = labels_in_shards(out, "validation")
  # Every photo of a label with 2 or more (machu_picchu's single photo left out).
  assert sorted(validation) == sorted(i for i, name in rows.items() if name in LANDMARKS)
  info = json.loads((out / "split.json").read_text())
  assert (info["train_images"], info["validation_images"]) == (0, len(validation))
  with pytest.raises(FileNotFoundError, match=f"no train-\\*.tfrecord shards in {out}"):
    make_dataset(out, "train", 4, image_size=32, seed=1)
  with pytest.raises(GldDataError, match=r"validation share must be in \[0, 1\], got 1.5"):
    labelled.prepare_labelled_photos(csv_path, tmp_path / "x", validation_share=1.5, log=print)

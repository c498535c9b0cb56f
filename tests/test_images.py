"""Every input mode becomes RGB uint8 by one rule; every bad file gives a clear error."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from delf_ret.errors import InputError
from delf_ret.images import ImageReadError
from delf_ret.images import crop_to_box
from delf_ret.images import list_images
from delf_ret.images import load_image


@pytest.fixture
def photo(shared_data):
  """A real photo, cropped small."""
  with Image.open(shared_data / "pairs" / "graf1.png") as image:
    return image.convert("RGB").crop((0, 0, 64, 48))


def test_rgb_photo(shared_data):
  image = load_image(shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg")
  assert image.dtype == np.uint8 and image.shape == (731, 1024, 3)


def test_grayscale_replicated(shared_data):
  image = load_image(shared_data / "distractors" / "left01.jpg")
  assert image.shape == (480, 640, 3)
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_rgba_composited_over_white(photo, tmp_path):
  rgba = photo.convert("RGBA")
  alpha = np.zeros((48, 64), np.uint8)
  alpha[:, 32:] = 255
  rgba.putalpha(Image.fromarray(alpha))
  rgba.save(tmp_path / "a.png")
  image = load_image(tmp_path / "a.png")
  assert (image[:, :32] == 255).all()
  np.testing.assert_array_equal(image[:, 32:], np.asarray(photo)[:, 32:])


def test_cmyk_and_palette(photo, tmp_path):
  photo.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
  cmyk = load_image(tmp_path / "c.jpg")
  assert cmyk.shape == (48, 64, 3)
  assert np.abs(cmyk.astype(int) - np.asarray(photo, int)).mean() < 20
  photo.convert("P").save(tmp_path / "p.png")
  assert load_image(tmp_path / "p.png").shape == (48, 64, 3)


def test_16bit_scaled_to_8bit(photo, tmp_path):
  gray8 = np.asarray(photo.convert("L"), np.uint16)
  Image.fromarray(gray8 * 257).save(tmp_path / "g16.png")
  with Image.open(tmp_path / "g16.png") as check:
    assert check.mode.startswith("I")
  image = load_image(tmp_path / "g16.png")
  np.testing.assert_array_equal(image[..., 0], gray8)


def test_exif_orientation_applied(photo, tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  photo.save(tmp_path / "r.jpg", exif=exif, quality=95)
  assert load_image(tmp_path / "r.jpg").shape == (64, 48, 3)


@pytest.mark.parametrize(
  "kind, message",
  [
    ("missing", "file not found"),
    ("empty", "empty"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("corrupt", "corrupt"),
    ("folder", "is a folder"),
  ],
)
def test_bad_inputs(kind, message, shared_data, tmp_path):
  path = tmp_path / f"{kind}.jpg"
  data = (shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg").read_bytes()
  if kind == "empty":
    path.write_bytes(b"")
  elif kind == "text":
    path.write_text("this is a text file, not a photo\n")
  elif kind == "truncated":
    path.write_bytes(data[: len(data) // 2])
  elif kind == "corrupt":
    path.write_bytes(data[:400] + bytes(range(256)) * 40)
  elif kind == "folder":
    path.mkdir()
  with pytest.raises(ImageReadError, match=message) as error:
    load_image(path)
  assert str(path) in str(error.value)


def test_too_many_pixels(shared_data):
  with pytest.raises(ImageReadError, match="too large"):
    load_image(shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg", max_pixels=1000)


def test_list_images(shared_data, tmp_path):
  assert len(list_images(shared_data / "landmarks")) == 17
  assert list_images(tmp_path) == []
  with pytest.raises(FileNotFoundError):
    list_images(tmp_path / "nope")


def test_image_lists_read_paths_beside_the_list_or_as_official_tools_do(tmp_path, monkeypatch):
  from delf_ret.images import read_image_list

  lists, work = tmp_path / "lists", tmp_path / "work"
  (lists / "photos").mkdir(parents=True)
  (work / "data").mkdir(parents=True)
  (lists / "photos" / "a.jpg").write_bytes(b"x")
  (work / "data" / "b.jpg").write_bytes(b"x")
  (lists / "images.txt").write_text("# comment\nphotos/a.jpg\n\ndata/b.jpg\nmissing.jpg\n")
  monkeypatch.chdir(work)
  paths = read_image_list(lists / "images.txt")
  # Beside the list; relative to the working directory (official reading); neither: beside.
  assert paths == [lists / "photos" / "a.jpg", pathlib.Path("data/b.jpg"), lists / "missing.jpg"]
  (lists / "latin1.txt").write_bytes("photos/caf\xe9.jpg\n".encode("latin-1"))
  with pytest.raises(InputError, match=r"latin1.txt: not a UTF-8 text file \(invalid"):
    read_image_list(lists / "latin1.txt")


def test_crop_to_box_rounds_as_the_official_code():
  image = np.arange(10 * 20 * 3).reshape(10, 20, 3)
  # round(2.5) = 2 (halves to even), round(1.2) = 1, round(7.1) = 7, y2 = 30 is clipped
  # to the 10 rows: rows 1..9, columns 2..6.
  crop = crop_to_box(image, (2.5, 1.2, 7.1, 30.0))
  assert crop.shape == (9, 5, 3)
  np.testing.assert_array_equal(crop[0, 0], image[1, 2])
  # round(3.5) = 4, round(0.5) = 0, round(12.5) = 12, round(8.6) = 9: rows 0..8, columns 4..11.
  crop = crop_to_box(image, (3.5, 0.5, 12.5, 8.6))
  assert crop.shape == (9, 8, 3)
  np.testing.assert_array_equal(crop[0, 0], image[0, 4])
  # The same pixels as the official extraction (int(round(b)) then a PIL crop).
  rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  for box in [(3.5, 0.5, 12.5, 8.6), (10.49, 4.51, 55.5, 39.5), (0.0, 0.0, 60.0, 40.0)]:
    official = np.asarray(Image.fromarray(rgb).crop([int(round(b)) for b in box]))
    np.testing.assert_array_equal(crop_to_box(rgb, box), official)
  with pytest.raises(InputError, match="empty"):
    crop_to_box(image, (5, 5, 5, 8))

"""Listing the self-supervised stage's training photos."""

import pytest

from delf_ret.train import photos


def test_photo_list_file_and_errors(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"x")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
  (tmp_path / "notes.txt").write_text("x")
  assert [p.name for p in photos.list_training_photos(tmp_path)] == ["a.jpg", "b.PNG"]
  listing = tmp_path / "list.txt"
  listing.write_text("# photos\nsub/b.PNG\n\n")
  assert photos.list_training_photos(listing) == [tmp_path / "sub" / "b.PNG"]
  with pytest.raises(photos.TrainingDataError, match="not found"):
    photos.list_training_photos(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(photos.TrainingDataError, match="no photos"):
    photos.list_training_photos(tmp_path / "empty")

"""Real pairs: epipolar geometry and Strecha cameras against hand-computed values."""

import numpy as np
import pytest

from delf_ret.protos.delf_train_config_pb2 import SelfSupervisedConfig
from delf_ret.train import real_pairs
from delf_ret.train.photos import TrainingDataError
from delf_ret.train.photos import list_training_photos
from delf_ret.train.photos import load_training_photos


def test_epipolar_distance_of_a_sideways_camera_pair():
  # Two cameras with focal 100 and principal point (50, 50), the second moved
  # sideways along x: epipolar lines are the image rows, y_b = y_a.
  intrinsics = np.array([[100, 0, 50], [0, 100, 50], [0, 0, 1]], float)
  p_a = intrinsics @ np.hstack([np.eye(3), np.zeros((3, 1))])
  p_b = intrinsics @ np.hstack([np.eye(3), np.array([[-1.0], [0], [0]])])
  fundamental = real_pairs.fundamental_from_projections(p_a, p_b)
  matches = np.array([[20, 30, 20, 10], [20, 30, 23, 10]], float)  # (ya, xa, yb, xb)
  np.testing.assert_allclose(real_pairs.epipolar_distance(fundamental, matches), [0, 3], atol=1e-9)


def test_strecha_camera_file(tmp_path):
  path = tmp_path / "0000.jpg.camera"
  path.write_text("100 0 50\n0 100 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 -2\n100 80\n")
  projection = real_pairs.read_strecha_camera(path)
  # R = I, camera centre (0, 0, -2): P = K [I | (0, 0, 2)]; the world origin is 2 in front.
  np.testing.assert_allclose(projection @ [0, 0, 0, 1], [100, 80, 2])
  path.write_text("1 2\n")
  with pytest.raises(TrainingDataError, match="camera file"):
    real_pairs.read_strecha_camera(path)


def test_unrelated_photos_whose_fundamental_fit_opencv_rejects_give_no_matches(shared_data):
  # Two ImageNet birds: OpenCV's USAC_MAGSAC raised "!model.empty()" on their ratio-test
  # matches (at the selfsup stage's 640 px), which stopped a recipe run.
  folder = shared_data / "train_objects"
  names = ["n01820546_lorikeet.jpg", "n01824575_coucal.jpg"]
  if not all((folder / name).is_file() for name in names):
    pytest.skip("train_objects photos not in ../shared/data")
  photos, _, _ = load_training_photos([folder / name for name in names], 640, 192)
  sift = [real_pairs.sift_keypoints(photo) for photo in photos]
  matches = real_pairs.sift_matches(*sift)
  assert matches.shape == (0, 4) and matches.dtype == np.float32


STRECHA_CAMERA = "100 0 50\n0 100 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 -2\n{size}\n"


@pytest.fixture(scope="module")
def fountain(shared_data):
  """Paths and photos (longer side 320 px) of a Strecha sequence whose cameras.csv is in the
  folder above: data/train/strecha/{cameras.csv, fountain-P11/*.jpg}."""
  folder = shared_data / "train" / "strecha" / "fountain-P11"
  if not (folder.parent / "cameras.csv").is_file():
    pytest.skip("Strecha photos not in ../shared/data")
  paths = list_training_photos(folder)
  photos, kept, _ = load_training_photos(paths, 320, 192)
  assert kept == paths
  return paths, photos


def test_a_photo_list_gets_the_same_cameras_as_its_folder(fountain, tmp_path):
  # The selfsup stage reads its photos from a folder or from a list file elsewhere (the
  # recipe writes OUT/selfsup_photos.txt); the cameras.csv is found from the photos.
  paths, photos = fountain
  from_folder = real_pairs.strecha_cameras(paths, photos)
  assert sorted(from_folder) == paths  # Every photo of the sequence has its camera.
  listed = [1, 2, 5]
  photo_list = tmp_path / "run" / "photos.txt"
  photo_list.parent.mkdir()
  photo_list.write_text("".join(f"{paths[i]}\n" for i in listed))
  list_paths = list_training_photos(photo_list)
  from_list = real_pairs.strecha_cameras(list_paths, [photos[i] for i in listed])
  assert sorted(from_list) == [paths[i] for i in listed]
  for path in from_list:
    np.testing.assert_array_equal(from_list[path], from_folder[path])
  # Pixels of the loaded 320 px photo: the camera of the 1536 px original, scaled.
  camera_file = paths[0].parent / "cameras" / "0001.jpg.camera"
  scaled = np.diag([320 / 1536, 320 / 1536, 1]) @ real_pairs.read_strecha_camera(camera_file)
  np.testing.assert_allclose(from_list[paths[1]], scaled)


def test_real_pairs_of_a_photo_list_use_the_cameras_and_a_stale_cache_is_redone(fountain, tmp_path):
  paths, photos = fountain
  listed = [0, 1]
  photo_list = tmp_path / "photos.txt"
  photo_list.write_text("".join(f"{paths[i]}\n" for i in listed))
  list_paths = list_training_photos(photo_list)
  settings = SelfSupervisedConfig(max_pair_gap=1, min_pair_matches=8)
  # A cache written before cameras were found for a photo list: its pair is unchecked.
  stale = [real_pairs.RealPair(0, 1, np.zeros((50, 4), np.float32))]
  real_pairs._write_cache(
    tmp_path / real_pairs.REAL_PAIRS_FILE, real_pairs._cache_key(list_paths, settings, {}), stale
  )
  lines: list[str] = []
  found = real_pairs.load_real_pairs(
    [photos[i] for i in listed], list_paths, settings, tmp_path, lines.append
  )
  assert "(2 photos with ground-truth cameras)" in lines[-1]
  assert len(found) == 1 and len(found[0].matches) >= 8
  assert found[0].matches.any()
  cameras = real_pairs.strecha_cameras(list_paths, [photos[i] for i in listed])
  fundamental = real_pairs.fundamental_from_projections(cameras[paths[0]], cameras[paths[1]])
  distances = real_pairs.epipolar_distance(fundamental, found[0].matches)
  assert distances.max() <= settings.max_epipolar_px
  # Read back from the cache the second time.
  again = real_pairs.load_real_pairs(
    [photos[i] for i in listed], list_paths, settings, tmp_path, lines.append
  )
  assert "read from" in lines[-1]
  np.testing.assert_array_equal(again[0].matches, found[0].matches)


def test_camera_tables_are_found_above_each_photo_once(tmp_path):
  # data/{cameras.csv, seq/a.jpg, seq/cameras/a.jpg.camera}; rows relative to data's parent.
  (tmp_path / "data" / "seq" / "cameras").mkdir(parents=True)
  photo = np.zeros((40, 50, 3), np.uint8)
  for name in ("a.jpg", "b.jpg"):
    (tmp_path / "data" / "seq" / name).write_bytes(b"")  # Only the path is read here.
  (tmp_path / "data" / "seq" / "cameras" / "a.jpg.camera").write_text(
    STRECHA_CAMERA.format(size="100 80")
  )
  table = tmp_path / "data" / "cameras.csv"
  table.write_text(
    "image,scene,camera_file\n"
    "data/seq/a.jpg,seq,data/seq/cameras/a.jpg.camera\n"
    "data/seq/b.jpg,seq,data/seq/cameras/b.jpg.camera\n"  # No camera file: skipped.
  )
  paths = [tmp_path / "data" / "seq" / "a.jpg", tmp_path / "data" / "seq" / "b.jpg"]
  assert real_pairs.camera_tables(paths) == [table]
  cameras = real_pairs.strecha_cameras(paths, [photo, photo])
  assert list(cameras) == [paths[0]]
  # Camera of a 100 px wide image, photo loaded 50 px wide: K halved.
  np.testing.assert_allclose(cameras[paths[0]] @ [0, 0, 0, 1], [50, 40, 2])
  (tmp_path / "data" / "seq" / "cameras" / "a.jpg.camera").write_text(
    STRECHA_CAMERA.format(size="100 eighty")
  )
  with pytest.raises(TrainingDataError, match=r"a\.jpg\.camera: not a Strecha camera file"):
    real_pairs.strecha_cameras(paths, [photo, photo])
  table.write_text("image,scene\ndata/seq/a.jpg,seq\n")
  with pytest.raises(TrainingDataError, match=r"cameras\.csv: not a camera table"):
    real_pairs.strecha_cameras(paths, [photo, photo])

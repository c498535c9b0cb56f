"""build_index_beam on real feature files in the Beam virtual environment: the same index as
build_index's, for the votes, ASMK and global first stages."""

import numpy as np
import pytest

from beam.conftest import GLOBAL_OVERRIDES
from beam.conftest import GLOBAL_PHOTOS
from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.features import read_features
from delf_ret.features import read_global_descriptor
from delf_ret.index import LocalFeatureIndex
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.records import read_records
from delf_ret.retrieval.first_stage import open_first_stage

PHOTOS = ["sacre_coeur_1", "sacre_coeur_2", "leuven_a", "leuven_b", "roofs_1", "river_2"]
# The shipped default model on small images; an IVF-PQ index, so that shards are merged with
# faiss' merge_from.
OVERRIDES = [
  "--config_override=image_scales=0.5,1.0",
  "--config_override=max_image_size=256",
  "--config_override=retrieval_config.index_type=ivfpq",
  "--config_override=retrieval_config.nlist=16",
  "--config_override=retrieval_config.pq_m=10",
  "--config_override=retrieval_config.pq_nbits=4",
  "--config_override=retrieval_config.nprobe=4",
]


def test_without_the_extra_the_tool_says_what_to_install(tmp_path):
  result = run_command(
    [installed_script("build_index_beam"), f"--features_dir={tmp_path}", "--index_dir=x"],
    timeout=120,
    env=tool_env(),
  )
  try:
    import apache_beam  # noqa: F401
  except ImportError:
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("pip install 'delf-ret[beam]'")
  else:
    pytest.skip("apache-beam is installed here")


def build_single_and_sharded(beam_venv, common, tmp_path):
  """build_index into tmp_path/single, then build_index_beam (2 workers, 2 images a shard)
  into tmp_path/sharded, both with the flags ``common``; the Beam tool's completed process."""
  single = run_command(
    [installed_script("build_index"), *common, f"--index_dir={tmp_path / 'single'}"],
    timeout=600,
    env=tool_env(),
  )
  assert single.returncode == 0, single.stderr[-3000:]
  options = "--direct_num_workers=2 --direct_running_mode=multi_processing"
  sharded = run_command(
    [
      str(beam_venv / "build_index_beam"),
      *common,
      f"--index_dir={tmp_path / 'sharded'}",
      "--images_per_shard=2",
      f"--beam_pipeline_options={options}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert sharded.returncode == 0, sharded.stderr[-3000:]
  return sharded


@pytest.mark.slow  # Builds (or reuses) the Beam environment; extracts photos; runs a pipeline.
def test_build_index_beam_equals_build_index(tmp_path, beam_venv):
  images = tmp_path / "images.txt"
  # In the order of their feature files' names: the order of the feature folder's shards.
  images.write_text("".join(f"{BUNDLED_IMAGES / name}.jpg\n" for name in sorted(PHOTOS)))
  labels = tmp_path / "labels.csv"
  labels.write_text("image,label\nsacre_coeur_1.jpg,sacre_coeur\nleuven_a.jpg,\n")
  features = tmp_path / "features"
  common = [*OVERRIDES, f"--features_dir={features}", f"--list_images_path={images}"]
  common.append(f"--labels_csv={labels}")
  sharded = build_single_and_sharded(beam_venv, common, tmp_path)
  assert "index at" in sharded.stdout and "from 3 shards" in sharded.stdout
  assert not (tmp_path / "sharded.shards").exists()  # Removed after the merge.
  expected, merged = (LocalFeatureIndex.load(tmp_path / name) for name in ("single", "sharded"))
  assert merged.image_ids() == expected.image_ids() == sorted(PHOTOS)
  assert merged.num_descriptors == expected.num_descriptors > 0
  queries = read_features(features / "sacre_coeur_2.delf").descriptors[:200]
  ours, theirs = merged.search_images(queries, 10), expected.search_images(queries, 10)
  assert ours.image_ids == theirs.image_ids
  np.testing.assert_array_equal(ours.images, theirs.images)
  np.testing.assert_array_equal(ours.keypoints, theirs.keypoints)
  np.testing.assert_allclose(ours.distances, theirs.distances, rtol=1e-6)
  for name in PHOTOS:
    assert merged.image_path(name) == expected.image_path(name) == f"{BUNDLED_IMAGES / name}.jpg"
    assert merged.image_label(name) == expected.image_label(name)
  assert merged.image_label("sacre_coeur_1") == "sacre_coeur"


@pytest.mark.slow  # Runs build_index and build_index_beam (a pipeline of 2 workers) on real photos.
@pytest.mark.parametrize("stage", ["asmk", "global"])
def test_build_index_beam_of_a_first_stage_ranks_like_build_index(
  tmp_path, beam_venv, global_photos, global_features, stage
):
  labels = tmp_path / "labels.csv"
  labels.write_text("image,label\nsacre_coeur_1.jpg,sacre_coeur\nleuven_a.jpg,\n")
  common = [
    *GLOBAL_OVERRIDES,
    f"--config_override=retrieval_config.first_stage={stage}",
    f"--features_dir={global_features}",
    f"--images_dir={global_photos}",  # Recorded with the labels (already extracted).
    f"--labels_csv={labels}",
  ]
  sharded = build_single_and_sharded(beam_venv, common, tmp_path)
  assert f"{stage} index at" in sharded.stdout and "from 3 shards" in sharded.stdout
  assert not (tmp_path / "sharded.shards").exists()  # Removed after the merge.
  for name in ("single", "sharded"):  # The packed feature store reranking reads.
    assert (tmp_path / name / "features" / "CURRENT").is_file()
  records = [read_records(tmp_path / name) for name in ("single", "sharded")]
  assert records[0] == records[1] and len(records[1]) == len(GLOBAL_PHOTOS)
  assert records[1]["sacre_coeur_1"] == ImageRecord(
    str(global_photos / "sacre_coeur_1.jpg"), "sacre_coeur"
  )
  overrides = [word.split("=", 1)[1] for word in common if word.startswith("--config_override")]
  config = load_config(default_config_path(), overrides).retrieval_config
  query = read_features(global_features / "sacre_coeur_2.delf")
  query_global = read_global_descriptor(global_features / "sacre_coeur_2.delg_global")
  expected, merged = (open_first_stage(tmp_path / name, config) for name in ("single", "sharded"))
  assert merged.image_ids() == expected.image_ids() == sorted(GLOBAL_PHOTOS)
  theirs = expected.rank(query, query_global, config)
  ours = merged.rank(query, query_global, config)
  assert [name for name, _ in ours] == [name for name, _ in theirs]
  assert len(ours) >= 3 and ours[0][0] == "sacre_coeur_2"
  np.testing.assert_allclose(
    [score for _, score in ours], [score for _, score in theirs], rtol=0, atol=1e-6
  )

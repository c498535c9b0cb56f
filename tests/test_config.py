import pathlib

import pytest

from delf_ret import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = config_lib.packaged_config_path(config_lib.EXAMPLE_CONFIG)
PUBLISHED_SCALES = [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]


def test_packaged_configs():
  assert EXAMPLE.parent.name == "configs" and EXAMPLE.parent.parent.name == "delf_ret"
  # The repository's configs/ links to the packaged example: one file.
  assert (REPO / "configs" / config_lib.EXAMPLE_CONFIG).resolve() == EXAMPLE.resolve()
  demo = config_lib.load_config(
    config_lib.packaged_config_path(config_lib.DEMO_CONFIG), ["delf_local_config.use_pca=false"]
  )
  assert [round(s, 4) for s in demo.image_scales] == PUBLISHED_SCALES
  with pytest.raises(config_lib.ConfigError, match="delf_demo.pbtxt"):
    config_lib.packaged_config_path("nope.pbtxt")


def test_example_config_has_published_defaults():
  config = config_lib.load_config(EXAMPLE)
  assert [round(s, 4) for s in config.image_scales] == PUBLISHED_SCALES
  local = config.delf_local_config
  assert local.max_feature_num == 1000
  assert local.score_threshold == 100.0
  assert local.use_pca and local.pca_parameters.pca_dim == 40
  assert not local.pca_parameters.use_whitening
  assert local.layer_name == "conv4_block6_out"
  # Relative paths are resolved against the config's folder.
  assert config.model_path == str(EXAMPLE.parent / "../models/delf_model.keras")
  assert pathlib.Path(local.pca_parameters.mean_path).is_absolute()


def test_overrides_scalar_repeated_bool_nested():
  config = config_lib.load_config(
    EXAMPLE,
    [
      "delf_local_config.max_feature_num=500",
      "image_scales=0.5, 1.0",
      "delf_local_config.pca_parameters.use_whitening=true",
      "max_image_size=-1",
      "delf_local_config.score_threshold=2.5",
    ],
  )
  assert config.delf_local_config.max_feature_num == 500
  assert list(config.image_scales) == [0.5, 1.0]
  assert config.delf_local_config.pca_parameters.use_whitening
  assert config.max_image_size == -1
  assert config.delf_local_config.score_threshold == 2.5


@pytest.mark.parametrize(
  "override, message",
  [
    ("max_feature_num=5", "unknown field 'max_feature_num'"),
    ("delf_local_config.max_feature_num", "field.path=value"),
    ("delf_local_config.max_feature_num=many", "invalid literal"),
    ("delf_local_config.use_pca=maybe", "not a boolean"),
    ("model_path.x=1", "no message field 'model_path'"),
    ("delf_local_config.max_feature_num=0", "must be positive"),
    ("image_scales=", "image_scales is empty"),
    ("image_scales=-1", "must be positive"),
  ],
)
def test_bad_overrides_are_rejected(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config(EXAMPLE, [override])


def test_bad_files(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_config(tmp_path / "nope.pbtxt")
  (tmp_path / "bad.pbtxt").write_text("image_scales: [0.5\nfoo: 1")
  with pytest.raises(config_lib.ConfigError, match="invalid config"):
    config_lib.load_config(tmp_path / "bad.pbtxt")
  (tmp_path / "nopca.pbtxt").write_text("image_scales: 1.0 delf_local_config { use_pca: true }")
  with pytest.raises(config_lib.ConfigError, match="mean_path"):
    config_lib.load_config(tmp_path / "nopca.pbtxt")


def test_text_round_trip():
  config = config_lib.load_config(EXAMPLE)
  assert config_lib.parse_config_text(config_lib.to_text(config)) == config


def test_retrieval_config_defaults_and_index_params():
  from delf_ret.index import IndexParams
  from delf_ret.match import RansacParams

  config = config_lib.load_config(
    EXAMPLE, ["retrieval_config.index_type=ivfpq", "retrieval_config.nprobe=32"]
  )
  retrieval = config.retrieval_config
  assert (retrieval.rerank_top_n, retrieval.min_inliers, retrieval.neighbors_per_descriptor) == (
    100,
    4,
    10,
  )
  assert IndexParams.from_config(retrieval) == IndexParams(index_type="ivfpq", nprobe=32)
  ransac = RansacParams.from_config(retrieval)
  assert (
    ransac.distance_threshold,
    ransac.residual_threshold,
    ransac.max_trials,
    ransac.transform,
    ransac.ratio_threshold,
    ransac.stop_probability,
    ransac.seed,
  ) == (pytest.approx(0.8), 20.0, 1000, "affine", None, 1.0, 0)
  ratio = config_lib.load_config(EXAMPLE, ["retrieval_config.match_ratio_threshold=0.8"])
  assert RansacParams.from_config(ratio.retrieval_config).ratio_threshold == pytest.approx(0.8)


def test_example_retrieval_block_lists_the_proto_defaults():
  """The example's retrieval_config restates nothing that disagrees with the .proto defaults."""
  from delf_ret.evaluation.metrics import DEFAULT_KS

  listed = config_lib.load_config(EXAMPLE).retrieval_config
  defaults = config_lib.DelfRetrievalConfig()
  for field in defaults.DESCRIPTOR.fields:
    if field.name == "eval_ks":
      assert tuple(listed.eval_ks) == DEFAULT_KS
    elif listed.HasField(field.name):
      assert getattr(listed, field.name) == getattr(defaults, field.name), field.name


@pytest.mark.parametrize(
  "override, message",
  [
    ("retrieval_config.ransac_stop_probability=0", "ransac_stop_probability must be in"),
    ("retrieval_config.index_type=lsh", "index_type must be one of"),
    ("retrieval_config.vote_weighting=sum", "vote_weighting must be one of"),
    ("retrieval_config.nlist=0", "nlist must be positive"),
    ("retrieval_config.rerank_top_n=-1", "must not be negative"),
    ("retrieval_config.rerank_min_inliers=-1", "rerank_min_inliers must not be negative"),
    ("retrieval_config.min_inlier_spread=1.5", "min_inlier_spread must be in"),
    ("retrieval_config.ransac_method=lmeds", "ransac_method must be one of"),
    ("retrieval_config.eval_ks=1,0", "eval_ks must be positive"),
    ("retrieval_config.match_ratio_threshold=1.5", "match_ratio_threshold must be in"),
    ("retrieval_config.recognition_top_k=0", "recognition_top_k must be at least 1"),
    ("retrieval_config.recognition_min_score=-1", "recognition_min_score must not be negative"),
  ],
)
def test_bad_retrieval_settings_are_rejected(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config(EXAMPLE, [override])


@pytest.mark.parametrize(
  "field, value, params_field",
  [
    ("ransac_method", "lmeds", "method"),
    ("min_inlier_spread", 1.5, "min_spread"),
    ("rerank_min_inliers", -1, None),
  ],
)
def test_retrieval_values_given_in_code_are_refused_with_the_config_message(
  field, value, params_field
):
  """RansacParams built directly and rerank given a DelfRetrievalConfig made in code run the
  config's own check: the same one line, naming the field and the value."""
  from delf_ret.match import RansacParams
  from delf_ret.retrieval.ranking import rerank

  with pytest.raises(config_lib.ConfigError) as from_file:
    config_lib.load_config(EXAMPLE, [f"retrieval_config.{field}={value}"])
  message = str(from_file.value)
  assert message.startswith(f"retrieval_config.{field} must ") and "\n" not in message
  assert message.endswith(f"got {value!r}" if isinstance(value, str) else f"got {value}")
  with pytest.raises(config_lib.ConfigError) as from_code:
    if params_field is None:  # rerank refuses it before it looks at a candidate.
      rerank(None, [], None, config_lib.DelfRetrievalConfig(**{field: value}))
    else:
      RansacParams(**{params_field: value})
  assert str(from_code.value) == message


def test_training_config_file_holds_the_published_defaults(tmp_path):
  defaults = config_lib.DelfTrainingConfig()
  config = config_lib.load_training_config(REPO / "configs" / "delf_train.pbtxt")
  for field in defaults.DESCRIPTOR.fields:
    assert getattr(config, field.name) == pytest.approx(getattr(defaults, field.name)), field.name
  assert (config.batch_size, config.image_size, config.save_every) == (32, 321, 2000)
  assert config.tuning_learning_rate == pytest.approx(0.005)
  assert config.attention_learning_rate == pytest.approx(0.01)
  overridden = config_lib.load_training_config(None, ["batch_size=8", "backbone_weights=random"])
  assert (overridden.batch_size, overridden.backbone_weights) == (8, "random")
  with pytest.raises(config_lib.ConfigError, match="batch_size must be positive"):
    config_lib.load_training_config(None, ["batch_size=0"])
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_training_config(tmp_path / "none.pbtxt")
  # A relative backbone weights path is resolved against the config's folder.
  (tmp_path / "t.pbtxt").write_text('backbone_weights: "weights/resnet50.h5"')
  assert config_lib.load_training_config(tmp_path / "t.pbtxt").backbone_weights == str(
    tmp_path / "weights" / "resnet50.h5"
  )


@pytest.mark.parametrize(
  "override, message",
  [
    ("batch_size=0", "batch_size must be positive, got 0"),
    ("image_size=16", "image_size must be at least 32, got 16"),
    ("min_crop_area=0", r"min_crop_area must be in \(0, 1\], got 0"),
    ("min_crop_area=1.5", r"min_crop_area must be in \(0, 1\], got 1.5"),
    ("tuning_frozen_stages=4", r"tuning_frozen_stages must be in \[0, 3\], got 4"),
    ("attention_max_steps=-1", "attention_max_steps must be at least 0, got -1"),
    ("momentum=nan", "momentum must be a finite number, got nan"),
    ("selfsup.crop_size=200", "selfsup.crop_size must be a multiple of 16, at least 64, got 200"),
    ("selfsup.pairs_per_batch=0", "selfsup.pairs_per_batch must be at least 1, got 0"),
    ("selfsup.real_pair_fraction=1.5", r"selfsup.real_pair_fraction must be in \[0, 1\]"),
    ("selfsup.learning_rate=0", "selfsup.learning_rate must be positive, got 0"),
    ("selfsup.temperature=inf", "selfsup.temperature must be a finite number, got inf"),
    ("selfsup.warmup_steps=1800", r"selfsup.warmup_steps must be in \[0, selfsup.max_steps\)"),
    ("selfsup.photo_max_side=100", "selfsup.photo_max_side must be at least selfsup.crop_size"),
    ("selfsup.min_zoom=2", r"selfsup.min_zoom must be in \(0, selfsup.max_zoom\], got 2"),
    ("selfsup.min_pair_matches=0", "selfsup.min_pair_matches must be at least 1, got 0"),
    (
      "selfsup.negative_exclusion_radius=-1",
      "selfsup.negative_exclusion_radius must be at least 0",
    ),
  ],
)
def test_bad_training_settings_are_rejected_naming_the_file(override, message):
  path = REPO / "configs" / "delf_default_model.pbtxt"
  with pytest.raises(config_lib.ConfigError, match=f"^training config {path}: {message}"):
    config_lib.load_training_config(path, [override])
  with pytest.raises(config_lib.ConfigError, match=f"^training config: {message}"):
    config_lib.load_training_config(None, [override])


def test_training_configs_built_in_code_are_validated_by_the_stages(tmp_path):
  from delf_ret.train.selfsup import train_selfsup

  config = config_lib.DelfTrainingConfig()
  config.selfsup.crop_size = 100
  with pytest.raises(config_lib.ConfigError, match="selfsup.crop_size must be a multiple of 16"):
    train_selfsup(tmp_path, tmp_path / "run", config)

"""What each training stage trains (config tuning_frozen_stages, the attention stage)."""

import pytest

from delf_ret.config import DelfTrainingConfig
from delf_ret.model import DelfModel
from delf_ret.train.trainer import stage_steps
from delf_ret.train.trainer import trainable_parts


def _trained_layer_prefixes(parts) -> set[str]:
  names = {v.path.split("/")[-2] for part in parts for v in part.trainable_variables}
  return {name.split("_")[0] for name in names}


@pytest.mark.slow  # Builds three DELF models (about 2 s each).
@pytest.mark.parametrize(
  "frozen, expected",
  [
    (0, {"conv1", "conv2", "conv3", "conv4", "tuning"}),
    (1, {"conv2", "conv3", "conv4", "tuning"}),
    (3, {"conv4", "tuning"}),
  ],
)
def test_tuning_stage_freezes_the_first_stages(frozen, expected):
  model = DelfModel(num_classes=2, seed=0)
  assert _trained_layer_prefixes(trainable_parts(model, "tuning", frozen)) == expected


@pytest.mark.slow  # Builds a DELF model (about 2 s).
def test_attention_stage_trains_only_the_attention_head_and_classifier():
  model = DelfModel(num_classes=2, seed=0)
  assert _trained_layer_prefixes(trainable_parts(model, "attention")) == {"attention"}
  assert not model.backbone.trainable_variables


def test_stage_steps():
  config = DelfTrainingConfig(max_steps=800)
  assert (stage_steps(config, "tuning"), stage_steps(config, "attention")) == (800, 800)
  config.attention_max_steps = 400
  assert (stage_steps(config, "tuning"), stage_steps(config, "attention")) == (800, 400)

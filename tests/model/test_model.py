import keras
import numpy as np
import pytest

from delf_ret.model import BackboneWeightsError
from delf_ret.model import DelfModel
from delf_ret.model import ModelFileError
from delf_ret.model import build_backbone
from delf_ret.model import load_delf_model
from delf_ret.model import save_delf_model


def test_output_shapes_and_stride(delf_model):
  outputs = delf_model(np.zeros((2, 160, 96, 3), np.float32))
  assert outputs["features"].shape == (2, 10, 6, 1024)
  assert outputs["attention"].shape == (2, 10, 6)
  assert outputs["tuning_logits"].shape == (2, 3)
  assert outputs["attention_logits"].shape == (2, 3)
  assert float(np.min(outputs["attention"])) >= 0.0  # softplus.


@pytest.mark.slow  # Builds, saves and loads DELF models (2-11 s).
def test_backbone_ends_at_conv4():
  backbone = build_backbone(None)
  assert backbone.layers[-1].name == "conv4_block6_out"
  assert not any(layer.name.startswith("conv5") for layer in backbone.layers)


@pytest.mark.slow  # Builds, saves and loads DELF models (2-11 s).
def test_checkpoint_round_trip_is_exact(delf_model, model_path):
  loaded = load_delf_model(model_path)
  images = np.random.default_rng(0).uniform(0, 255, (1, 64, 80, 3)).astype(np.float32)
  before, after = delf_model(images), loaded(images)
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])
  assert loaded.num_classes == 3


@pytest.mark.slow  # Builds, saves and loads DELF models (2-11 s).
def test_local_backbone_weights_file(tmp_path):
  resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
  path = tmp_path / "resnet50_notop.weights.h5"
  resnet.save_weights(path)
  backbone = build_backbone(str(path))
  expected = resnet.get_layer("conv4_block6_3_conv").kernel.numpy()
  np.testing.assert_array_equal(backbone.get_layer("conv4_block6_3_conv").kernel.numpy(), expected)


@pytest.mark.slow  # Builds, saves and loads DELF models (2-11 s).
def test_backbone_from_a_delf_model_file(delf_model, model_path):
  # backbone_weights naming a DELF model (.keras or .npz): its backbone only.
  model = DelfModel(num_classes=5, backbone_weights=str(model_path), seed=7)
  for mine, theirs in zip(model.backbone.weights, delf_model.backbone.weights):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  fresh = DelfModel(num_classes=5, seed=7)
  np.testing.assert_array_equal(
    model.attention_conv1.kernel.numpy(), fresh.attention_conv1.kernel.numpy()
  )
  assert model.num_classes == 5


@pytest.mark.slow  # Builds, saves and loads DELF models (2-11 s).
def test_missing_weights_and_checkpoint(tmp_path):
  with pytest.raises(BackboneWeightsError, match="not found"):
    DelfModel(backbone_weights=str(tmp_path / "missing.h5"))
  with pytest.raises(ModelFileError, match="not found"):
    DelfModel(backbone_weights=str(tmp_path / "selfsup.npz"))
  with pytest.raises(ModelFileError, match="not found"):
    load_delf_model(tmp_path / "missing.keras")
  with pytest.raises(ModelFileError, match=".keras"):
    save_delf_model(DelfModel(seed=1), tmp_path / "model.h5")

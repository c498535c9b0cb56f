"""The DELF network: ResNet50 conv4 backbone, attention head and classifier heads."""

from delf_ret.model.delf import (
  BACKBONE_LAYER,
  BackboneWeightsError,
  DelfModel,
  ModelFileError,
  build_backbone,
  load_delf_model,
  save_delf_model,
)

__all__ = [
  "BACKBONE_LAYER",
  "DelfModel",
  "BackboneWeightsError",
  "ModelFileError",
  "build_backbone",
  "load_delf_model",
  "save_delf_model",
]

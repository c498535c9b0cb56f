"""The DELF network: ResNet50 conv4 backbone, attention head and classifier heads."""

from delf_ret.model.delf import BACKBONE_LAYER
from delf_ret.model.delf import BackboneWeightsError
from delf_ret.model.delf import DelfModel
from delf_ret.model.delf import ModelFileError
from delf_ret.model.delf import build_backbone
from delf_ret.model.delf import load_delf_model
from delf_ret.model.delf import save_delf_model

__all__ = [
  "BACKBONE_LAYER",
  "DelfModel",
  "BackboneWeightsError",
  "ModelFileError",
  "build_backbone",
  "load_delf_model",
  "save_delf_model",
]

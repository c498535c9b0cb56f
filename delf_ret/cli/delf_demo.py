"""Demo: DELF features of real landmark photos, with a per-image summary.

Usage:
  delf_demo [--images_dir DIR] [--output_dir demo_output]

Images: --images_dir, else the landmark photos of the shared data
($DELF_RET_SHARED_DATA/landmarks, or ../shared/data/landmarks from the
current folder) when present, else the photos bundled in delf_ret/demo_data.
Steps:
1. create a DELF model with a randomly initialised backbone (seed 0: no
   pretrained weights are available offline; the features show the pipeline,
   not trained retrieval quality);
2. extract raw descriptors over the 7-scale pyramid (the packaged
   delf_ret/configs/delf_demo.pbtxt);
3. learn the 40-d PCA from them;
4. write one .delf feature file per image and print a summary.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import time

from absl import flags

from delf_ret import config as config_lib
from delf_ret.cli.common import define_config_flags, load_config_from_flags, run_tool
from delf_ret.cli.inputs import resolve_image_inputs
from delf_ret.features import feature_file_names, write_features

FLAGS = flags.FLAGS
flags.DEFINE_string("images_dir", None, "Folder of images (default: shared landmarks or bundled).")
flags.DEFINE_string("output_dir", "demo_output", "Folder for the model, PCA and feature files.")
define_config_flags("Config (default: the packaged delf_ret/configs/delf_demo.pbtxt).")

BUNDLED_IMAGES = pathlib.Path(str(importlib.resources.files("delf_ret") / "demo_data"))


def default_images_dir() -> pathlib.Path:
  """The shared landmark photos when present (user data, see the module docstring), else the bundled ones."""
  shared = pathlib.Path(os.environ.get("DELF_RET_SHARED_DATA", "../shared/data")) / "landmarks"
  return shared if shared.is_dir() else BUNDLED_IMAGES


def main(argv: list[str]) -> int:
  del argv
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.pca_training import learn_pca_from_images, with_pca
  from delf_ret.model import DelfModel, save_delf_model

  images_dir = pathlib.Path(FLAGS.images_dir) if FLAGS.images_dir else default_images_dir()
  config_path = FLAGS.config_path or config_lib.packaged_config_path(config_lib.DEMO_CONFIG)
  output_dir = pathlib.Path(FLAGS.output_dir)
  image_paths = resolve_image_inputs(str(images_dir), None)
  names = feature_file_names(image_paths)
  config = load_config_from_flags(config_path, ["delf_local_config.use_pca=false"])
  print(f"images: {len(image_paths)} from {images_dir}")

  model_path = output_dir / "delf_random_seed0.keras"
  print(f"1/4 model: ResNet50 conv4 + attention, random weights (seed 0) -> {model_path}")
  model = DelfModel(num_classes=1, backbone_weights=None, seed=0)
  save_delf_model(model, model_path)

  print(f"2/4 raw features, scales {[round(s, 4) for s in config.image_scales]}, "
        f"max side {config.max_image_size} px")
  start = time.time()
  learned = learn_pca_from_images(config, image_paths, output_dir / "pca", model=model,
                                  log=lambda line: print("   ", line, flush=True))
  seconds = (time.time() - start) / max(1, len(image_paths))
  raw, failures, paths = learned.raw, learned.failures, learned.paths
  pca_dim = config.delf_local_config.pca_parameters.pca_dim
  print(f"3/4 PCA learned from {learned.num_descriptors} descriptors -> {paths[0].parent}")

  final_config = with_pca(config, paths)
  final_config.model_path = str(model_path)
  extractor = DelfExtractor(final_config, model=model)
  features_dir = output_dir / "features"
  print(f"4/4 features ({pca_dim}-d) -> {features_dir}")
  header = f"{'image':<48} {'features':>8} {'dim':>4} {'attention':>19} {'y range':>12} {'x range':>12}"
  print(header)
  for path, name in zip(image_paths, names):
    if path not in raw:
      continue
    features = extractor.finalize(raw[path])
    write_features(features_dir / name, features)
    att, loc = features.attention, features.locations
    print(f"{path.name[:48]:<48} {features.num_features:>8} {features.descriptor_dim:>4} "
          f"{att.min():>9.3f}..{att.max():<8.3f} "
          f"{loc[:, 0].min():>5.0f}..{loc[:, 0].max():<5.0f} {loc[:, 1].min():>5.0f}..{loc[:, 1].max():<5.0f}")
  print(f"{seconds:.2f} s per image for the pyramid (and PCA) on this machine; "
        f"{len(raw)} images done, {len(failures)} failed")
  return 1 if failures else 0


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()

"""Demo: DELF features of real landmark photos, with a per-image summary.

Usage:
  python -m delf_ret.demo [--images_dir DIR] [--output_dir demo_output]

Images: --images_dir, else ../shared/data/landmarks next to the repository
(when present), else the photos bundled in delf_ret/demo_data. Steps:
1. create a DELF model with a randomly initialised backbone (seed 0: no
   pretrained weights are available offline; the features show the pipeline,
   not trained retrieval quality);
2. extract raw descriptors over the 7-scale pyramid (configs/delf_demo.pbtxt);
3. learn the 40-d PCA from them;
4. write one .delf feature file per image and print a summary.
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags

from delf_ret import config as config_lib
from delf_ret.extract import pca as pca_lib
from delf_ret.errors import InputError
from delf_ret.features import feature_file_names, write_features
from delf_ret.inputs import resolve_image_inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("images_dir", None, "Folder of images (default: shared landmarks or bundled).")
flags.DEFINE_string("output_dir", "demo_output", "Folder for the model, PCA and feature files.")
flags.DEFINE_string("config_path", None, "Config (default: configs/delf_demo.pbtxt).")
flags.DEFINE_multi_string("config_override", [], "Override one config field (repeatable).")

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SHARED_LANDMARKS = REPO_DIR.parent / "shared" / "data" / "landmarks"
BUNDLED_IMAGES = PACKAGE_DIR / "demo_data"


def default_images_dir() -> pathlib.Path:
  return SHARED_LANDMARKS if SHARED_LANDMARKS.is_dir() else BUNDLED_IMAGES


def main(argv):
  del argv
  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.pca_training import extract_raw_features, stack_normalized, without_pca
  from delf_ret.model import DelfModel, save_delf_model

  images_dir = pathlib.Path(FLAGS.images_dir) if FLAGS.images_dir else default_images_dir()
  config_path = FLAGS.config_path or REPO_DIR / "configs" / "delf_demo.pbtxt"
  output_dir = pathlib.Path(FLAGS.output_dir)
  try:
    image_paths = resolve_image_inputs(str(images_dir), None)
    names = feature_file_names(image_paths)
    config = config_lib.load_config(config_path, [
        *FLAGS.config_override, "delf_local_config.use_pca=false"])
  except (InputError, config_lib.ConfigError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"images: {len(image_paths)} from {images_dir}")

  model_path = output_dir / "delf_random_seed0.keras"
  print(f"1/4 model: ResNet50 conv4 + attention, random weights (seed 0) -> {model_path}")
  model = DelfModel(num_classes=1, backbone_weights=None, seed=0)
  save_delf_model(model, model_path)

  print(f"2/4 raw features, scales {[round(s, 4) for s in config.image_scales]}, "
        f"max side {config.max_image_size} px")
  start = time.time()
  raw_extractor = DelfExtractor(without_pca(config), model=model)
  raw, failures = extract_raw_features(raw_extractor, image_paths,
                                       log=lambda line: print("   ", line, flush=True))
  seconds = (time.time() - start) / max(1, len(image_paths))

  paths = pca_lib.pca_paths(output_dir / "pca")
  pca_model = pca_lib.learn_pca(stack_normalized(raw))
  pca_lib.save_pca(pca_model, *paths)
  pca_dim = config.delf_local_config.pca_parameters.pca_dim
  print(f"3/4 PCA learned from {sum(r.descriptors.shape[0] for r in raw.values())} "
        f"descriptors -> {paths[0].parent}")

  final_config = config_lib.load_config(config_path, [
      *FLAGS.config_override, f"model_path={model_path}", "delf_local_config.use_pca=true",
      f"delf_local_config.pca_parameters.mean_path={paths[0]}",
      f"delf_local_config.pca_parameters.projection_matrix_path={paths[1]}",
      f"delf_local_config.pca_parameters.pca_variances_path={paths[2]}"])
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
  print(f"{seconds:.2f} s per image for the pyramid on this machine; "
        f"{len(raw)} images done, {len(failures)} failed")
  return 1 if failures else 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()

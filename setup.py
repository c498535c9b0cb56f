"""delf-ret: landmark image retrieval with DELF-style local features."""

import pathlib

from setuptools import find_packages
from setuptools import setup

README = pathlib.Path(__file__).parent / "README.md"
TFDS = ["tensorflow-datasets>=4.9", "importlib_resources>=6.0"]
SKIMAGE = ["scikit-image>=0.22"]
# Apache Beam: extraction and index building on many machines (docs/scaling.md).
BEAM = ["apache-beam>=2.60"]
# The local web page (delf_serve).
SERVE = ["flask>=3.0"]

setup(
  name="delf-ret",
  version="0.1.0",
  description="Landmark image retrieval with DELF-style local features",
  long_description=README.read_text() if README.exists() else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.10",
  packages=find_packages(include=["delf_ret", "delf_ret.*"]),
  # Default configs and the demo photos ship with the package; nothing reads the repository.
  package_data={
    "delf_ret": [
      "configs/*.pbtxt",
      "demo_data/*",
      "default_model/*.npz",
      "default_model/*.npy",
      "default_model/*.pbtxt",
      "default_model/*.md",
      "default_model/*.json",
      "serve/templates/*.html",
      "serve/static/*",
    ]
  },
  install_requires=[
    "tensorflow>=2.16",
    # tf.summary (training logs) needs TensorBoard installed.
    "tensorboard>=2.16",
    "faiss-cpu>=1.8",
    "numpy>=1.26",
    # The official Revisited ground truths gnd_r*.mat (scipy.io.loadmat).
    "scipy>=1.11",
    "matplotlib>=3.8",
    "absl-py>=2.0",
    # The committed *_pb2.py modules are protoc 31.1 gencode (grpcio-tools 1.74.0,
    # scripts/regenerate_protos.py): protobuf 6.31 and newer; apache-beam needs < 7.
    "protobuf>=6.31,<8",
    "pillow>=10.0",
    # Self-supervised training views, SIFT-verified real pairs, demo pictures.
    "opencv-python-headless>=4.8",
    # Progress bars of the command-line tools.
    "tqdm>=4.60",
  ],
  # Optional parts (README, "Set-up"); the code that needs one names its pip command.
  extras_require={
    # The tensorflow_datasets builder of GLDv2 (delf_ret.train.tfds_gldv2). Its builders
    # import importlib_resources through etils.epath, which does not declare it for
    # Python >= 3.11.
    "tfds": TFDS,
    # scikit-image: the non-default RANSAC back-end (ransac_backend: "skimage") and the
    # sample photos of self-supervised training (selfsup.use_skimage_photos).
    "skimage": SKIMAGE,
    "beam": BEAM,
    "serve": SERVE,
    # Tests (with the optional parts they test; Beam's tests build their own environment,
    # since apache-beam needs protobuf < 7) and the style tools .ci/run checks; ruff pinned
    # to a minor version so that its formatter does not drift.
    "test": [
      "pytest>=7.4",
      # Two test processes (pyproject.toml's addopts): the suite is half subprocess start-ups.
      "pytest-xdist>=3.5",
      "ruff>=0.17,<0.18",
      "mypy>=1.10",
      *TFDS,
      *SKIMAGE,
      *SERVE,
      # The reference ASMK implementation (tests/index/test_asmk_reference.py); builds from
      # source (needs a C compiler).
      "asmk==0.1.1",
      # Drives Debian's Chromium (/usr/bin/chromium) in the page's tests; no browser download.
      "playwright>=1.45",
    ],
  },
  entry_points={
    "console_scripts": [
      "extract_features=delf_ret.cli.extract_features:run",
      "match_images=delf_ret.cli.match_images:run",
      "build_index=delf_ret.cli.build_index:run",
      "perform_retrieval=delf_ret.cli.perform_retrieval:run",
      "query_index=delf_ret.cli.query_index:run",
      "learn_pca=delf_ret.cli.learn_pca:run",
      "create_delf_model=delf_ret.cli.create_delf_model:run",
      "export_delf_model=delf_ret.cli.export_delf_model:run",
      "download_dataset=delf_ret.cli.download_dataset:run",
      "prepare_gldv2=delf_ret.cli.prepare_gldv2:run",
      "prepare_labelled_photos=delf_ret.cli.prepare_labelled_photos:run",
      "train_delf=delf_ret.cli.train_delf:run",
      "delf_demo=delf_ret.cli.delf_demo:run",
      "extract_features_beam=delf_ret.cli.extract_features_beam:run",
      "build_index_beam=delf_ret.cli.build_index_beam:run",
      "merge_index=delf_ret.cli.merge_index:run",
      "recognize=delf_ret.cli.recognize:run",
      "make_benchmark=delf_ret.cli.make_benchmark:run",
      "delf_serve=delf_ret.cli.delf_serve:run",
    ],
  },
)

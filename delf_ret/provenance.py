"""Where a figure or a model came from: the machine and the library versions it ran with.

Deterministic training gives bit-identical weights only on the same CPU type, core
count and library versions, and benchmark figures depend on them too, so the recipe's
``TRAINING.json`` and the benchmarks' result JSONs record them.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import re

# Libraries whose numerics decide the weights and the figures (Keras ships apart from
# TensorFlow since Keras 3); the package's other declared dependencies are added to them.
_NUMERIC_LIBRARIES = (
  "tensorflow",
  "keras",
  "numpy",
  "opencv-python-headless",
  "opencv-python",
  "faiss-cpu",
  "scikit-learn",
  "scikit-image",
)


def cpu_model(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> str:
  """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows, else ''."""
  try:
    for line in cpuinfo.read_text(errors="replace").splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and value.strip():
        return value.strip()
  except OSError:
    pass
  return platform.processor() or ""


def library_versions() -> dict[str, str]:
  """Installed version of each numeric library and each dependency delf-ret declares,
  by distribution name (sorted); libraries not installed are left out."""
  names = set(_NUMERIC_LIBRARIES)
  try:
    for requirement in importlib.metadata.requires("delf-ret") or ():
      if "extra ==" not in requirement:
        names.add(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])
  except importlib.metadata.PackageNotFoundError:
    pass
  versions = {}
  for name in sorted(names, key=str.lower):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return versions


def environment() -> dict:
  """Python version, platform, CPU model, core count and library versions (all strings
  but ``cpu_cores``, an int): what a rerun must match to reproduce weights exactly."""
  return {
    "python": platform.python_version(),
    "platform": platform.platform(),
    "machine": platform.machine(),
    "cpu_model": cpu_model(),
    "cpu_cores": os.cpu_count(),
    "libraries": library_versions(),
  }

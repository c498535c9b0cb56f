"""The machine and library facts recorded beside trained weights and benchmark figures."""

import json
import os

import cv2
import numpy as np

from delf_ret.provenance import cpu_model
from delf_ret.provenance import environment
from delf_ret.provenance import library_versions


def test_cpu_model_reads_the_model_name_line(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(
    "processor\t: 0\nvendor_id\t: GenuineIntel\n"
    "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu\n"
    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n"
  )
  assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) CPU @ 2.20GHz"


def test_cpu_model_without_cpuinfo_asks_platform(tmp_path, monkeypatch):
  monkeypatch.setattr("platform.processor", lambda: "arm")
  assert cpu_model(tmp_path / "missing") == "arm"
  (tmp_path / "no_model_line").write_text("processor\t: 0\n")
  assert cpu_model(tmp_path / "no_model_line") == "arm"
  monkeypatch.setattr("platform.processor", lambda: "")
  assert cpu_model(tmp_path / "missing") == ""


def test_library_versions_are_the_installed_ones():
  versions = library_versions()
  assert versions["numpy"] == np.__version__
  opencv = versions.get("opencv-python-headless") or versions["opencv-python"]
  assert opencv.startswith(cv2.__version__.split("-")[0])
  for name in ("tensorflow", "keras", "faiss-cpu", "scikit-learn", "protobuf", "absl-py"):
    assert versions[name], name
  assert "pytest" not in versions  # A test extra, not what the package runs with.


def test_environment_is_json_and_names_the_machine():
  facts = json.loads(json.dumps(environment()))
  assert facts["cpu_cores"] == os.cpu_count()
  assert facts["python"].count(".") == 2
  assert set(facts) == {"python", "platform", "machine", "cpu_model", "cpu_cores", "libraries"}

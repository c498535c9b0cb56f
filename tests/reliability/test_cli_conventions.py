"""The console scripts behave as conventional tools (issue 27: items 2, 3, 4, 7, 14, 15).

--help exits 0 and shows the config values in force; TensorFlow and Pillow print
no alarms at start-up; Ctrl-C prints one line and exits 130; --images_dir reads
sub-folders with --recursive; query_index refuses a box that is not finite and a
number of results that is not positive. Each test runs the installed console
scripts in a subprocess, on real photos.
"""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from PIL import Image

from conftest import REPO
from conftest import installed_script
from conftest import run_command
from conftest import tool_env
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path

pytestmark = pytest.mark.slow  # Every test runs console scripts as subprocesses.

SCRIPTS = re.findall(r'"(\w+)=delf_ret\.cli\.\w+:run"', (REPO / "setup.py").read_text())
INTERRUPTED = "interrupted; run the same command again to resume"
# What TensorFlow and Pillow printed at every start before: the lines must not come back.
ALARMS = re.compile(
  r"absl::InitializeLog|^[IWE]\d{4} .*\.cc:\d+\]|cuInit|oneDNN|cpu_feature_guard|cudart_stub"
  r"|rebuild TensorFlow|DecompressionBombWarning",
  re.MULTILINE,
)


def quiet_env(**extra: str) -> dict[str, str]:
  """tool_env as a user has it: TF_CPP_MIN_LOG_LEVEL not set (unless in ``extra``)."""
  env = tool_env()
  env.pop("TF_CPP_MIN_LOG_LEVEL")
  return {**env, **extra}


def small_photos(folder, shared_data, names=("graf1.png", "box.png")):
  """Writes 160x120 RGB copies of shared photos into ``folder``; returns their paths."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for name in names:
    with Image.open(shared_data / "pairs" / name) as image:
      image.convert("RGB").resize((160, 120)).save(folder / name)
    paths.append(folder / name)
  return paths


# Item 2: --help.


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(script):
  path = installed_script(script)
  for flag in ("--help", "-h", "--helpfull"):
    result = run_command([path, flag], timeout=300, env=tool_env())
    assert result.returncode == 0, (flag, result.returncode, result.stderr[-2000:])
    assert re.search(r"^  --\w+: ", result.stdout, re.MULTILINE), (flag, result.stdout[:2000])
    assert result.stderr == "", (flag, result.stderr[-2000:])


def test_help_still_refuses_bad_flags_with_status_1():
  script = installed_script("match_images")
  result = run_command([script, "--no_such_flag"], timeout=300, env=tool_env())
  assert result.returncode == 1 and "no_such_flag" in result.stderr


def test_config_derived_defaults_show_the_value_in_force():
  result = run_command([installed_script("match_images"), "--help"], timeout=300, env=tool_env())
  assert result.returncode == 0, result.stderr
  text = " ".join(result.stdout.split())  # absl wraps the help at 80 columns.
  config = load_config(default_config_path()).retrieval_config
  for field, value in (
    ("ransac_max_trials", str(config.ransac_max_trials)),
    ("ransac_transform", config.ransac_transform),
    ("match_mutual", str(config.match_mutual).lower()),
    ("match_distance_threshold", f"{config.match_distance_threshold:.6g}"),
  ):
    assert f"the config's retrieval_config.{field}, {value} in the default config" in text, field


# Item 3: a quiet start.


@pytest.fixture(scope="module")
def start_up(tmp_path_factory, shared_data):
  """extract_features, as a user runs it, on two photos and a 9500x9500 PNG (under Pillow's
  decompression-bomb error, over its warning limit and the config's pixel limit)."""
  root = tmp_path_factory.mktemp("start_up")
  small_photos(root / "photos", shared_data)
  Image.new("L", (9500, 9500)).save(root / "photos" / "big.png")
  return run_command(
    [
      installed_script("extract_features"),
      f"--images_dir={root / 'photos'}",
      f"--output_dir={root / 'features'}",
    ],
    timeout=600,
    env=quiet_env(),
  )


def test_start_up_prints_no_tensorflow_alarms(start_up):
  assert start_up.returncode == 1, start_up.stderr[-3000:]  # The big PNG failed.
  assert "graf1.png: " in start_up.stdout and "box.png: " in start_up.stdout
  assert not ALARMS.search(start_up.stderr), start_up.stderr[-3000:]


def test_pillow_bomb_warning_does_not_leak_beside_the_error(start_up):
  assert "DecompressionBombWarning" not in start_up.stderr, start_up.stderr[-3000:]
  failures = start_up.stderr.split("1 of 3 images failed:\n", 1)[-1].splitlines()
  assert len(failures) == 1 and "big.png: image too large (9500x9500" in failures[0], failures


def test_tensorflow_logs_kept_when_the_user_sets_their_level(tmp_path, shared_data):
  small_photos(tmp_path / "photos", shared_data, names=("box.png",))
  result = run_command(
    [
      installed_script("extract_features"),
      f"--images_dir={tmp_path / 'photos'}",
      f"--output_dir={tmp_path / 'features'}",
    ],
    timeout=600,
    env=quiet_env(TF_CPP_MIN_LOG_LEVEL="0"),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r"^I\d{4} ", result.stderr, re.MULTILINE), result.stderr[-3000:]


# Item 4: Ctrl-C.


def _default_sigint() -> None:
  """In the child before exec: Ctrl-C's default action, even where this test runs with SIGINT
  ignored (a background job of a non-interactive shell inherits SIG_IGN, and Python then
  keeps ignoring it)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, env) -> subprocess.Popen:
  return subprocess.Popen(
    args,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    stdin=subprocess.DEVNULL,
    text=True,
    env=env,
    preexec_fn=_default_sigint,
  )


def interrupt(process: subprocess.Popen) -> tuple[str, str]:
  """Sends SIGINT (what Ctrl-C sends); returns the rest of (stdout, stderr)."""
  process.send_signal(signal.SIGINT)
  try:
    return process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()


def test_ctrl_c_while_working_prints_one_line_and_exits_130(tmp_path, shared_data):
  features = tmp_path / "features"
  command = [
    installed_script("extract_features"),
    f"--images_dir={shared_data / 'landmarks'}",
    f"--output_dir={features}",
  ]
  process = start(command, quiet_env())
  first = process.stdout.readline()  # The first image is done: work has started.
  assert first.startswith("[1/"), first
  _, stderr = interrupt(process)
  assert process.returncode == 130, stderr[-3000:]
  assert stderr == INTERRUPTED + "\n"
  assert len(list(features.glob("*.delf"))) >= 1  # What was done is kept for the rerun.


def test_ctrl_c_while_tensorflow_loads_prints_one_line_and_exits_130(tmp_path, shared_data):
  if not os.path.isdir("/proc/self"):
    pytest.skip("needs /proc to see TensorFlow load")
  small_photos(tmp_path / "photos", shared_data)
  command = [
    installed_script("extract_features"),
    f"--images_dir={tmp_path / 'photos'}",
    f"--output_dir={tmp_path / 'features'}",
  ]
  process = start(command, quiet_env())
  maps = f"/proc/{process.pid}/maps"
  deadline = time.time() + 300
  while "tensorflow" not in open(maps).read():  # TensorFlow's libraries are loading.
    assert process.poll() is None and time.time() < deadline, "TensorFlow never loaded"
    time.sleep(0.05)
  stdout, stderr = interrupt(process)
  assert process.returncode == 130, stderr[-3000:]
  assert stderr == INTERRUPTED + "\n" and stdout == ""


def test_ctrl_c_while_the_tool_loads_its_modules():
  if not os.path.isdir("/proc/self"):
    pytest.skip("needs /proc to see the modules load")
  # build_index loads faiss with its modules, after the shared ones (delf_ret.cli.common); with
  # no flags it would end with a usage error once they are loaded.
  process = start([installed_script("build_index")], quiet_env())
  deadline = time.time() + 300
  while "faiss" not in open(f"/proc/{process.pid}/maps").read():
    assert process.poll() is None and time.time() < deadline, "faiss never loaded"
    time.sleep(0.01)
  stdout, stderr = interrupt(process)
  if "is required" in stderr:
    pytest.skip("the modules loaded before the signal came")
  assert process.returncode == 130, stderr[-3000:]
  assert stderr == INTERRUPTED + "\n" and stdout == ""


# Item 7: --recursive.


@pytest.fixture()
def nested_photos(tmp_path, shared_data):
  """root/a/graf1.png, root/a/b/box.png and root/c/graf3.png: photos only in sub-folders."""
  root = tmp_path / "photos"
  small_photos(root / "a", shared_data, names=("graf1.png",))
  small_photos(root / "a" / "b", shared_data, names=("box.png",))
  small_photos(root / "c", shared_data, names=("graf3.png",))
  return root


def test_images_dir_is_not_recursive_by_default_and_says_so(nested_photos, tmp_path):
  script = installed_script("extract_features")
  result = run_command(
    [script, f"--images_dir={nested_photos}", f"--output_dir={tmp_path / 'f'}"],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith("error: no image files in ") and "--recursive" in result.stderr
  help_text = " ".join(run_command([script, "--help"], timeout=300, env=tool_env()).stdout.split())
  assert "--[no]recursive" in help_text and "Default: not recursive" in help_text


def test_recursive_reads_sub_folders_in_sorted_order(nested_photos, tmp_path):
  features = tmp_path / "features"
  result = run_command(
    [
      installed_script("extract_features"),
      f"--images_dir={nested_photos}",
      "--recursive",
      f"--output_dir={features}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  steps = re.findall(r"^\[(\d)/3\] (\S+):", result.stdout, re.MULTILINE)
  # Sorted by path inside the folder: a/b/box.png, a/graf1.png, c/graf3.png.
  assert [name for _, name in steps] == ["box.png", "graf1.png", "graf3.png"], result.stdout
  assert sorted(p.name for p in features.glob("*.delf")) == ["box.delf", "graf1.delf", "graf3.delf"]


def test_recursive_refuses_two_images_with_one_id(nested_photos, tmp_path):
  shutil.copy(nested_photos / "a" / "graf1.png", nested_photos / "c" / "graf1.png")
  result = run_command(
    [
      installed_script("extract_features"),
      f"--images_dir={nested_photos}",
      "--recursive",
      f"--output_dir={tmp_path / 'features'}",
    ],
    timeout=300,
    env=tool_env(),
  )
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
  assert "a/graf1.png" in lines[0] and "c/graf1.png" in lines[0]
  assert not (tmp_path / "features").exists()


# Items 14 and 15: query_index's flags.


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, shared_data):
  """An index (default config) of two photos, their feature files, and a query photo."""
  root = tmp_path_factory.mktemp("small_index")
  photos = small_photos(root / "photos", shared_data)
  result = run_command(
    [
      installed_script("build_index"),
      f"--images_dir={root / 'photos'}",
      f"--features_dir={root / 'features'}",
      f"--index_dir={root / 'index'}",
    ],
    timeout=600,
    env=tool_env(),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return [
    installed_script("query_index"),
    f"--image={photos[1]}",
    f"--index_dir={root / 'index'}",
    f"--features_dir={root / 'features'}",
  ]


@pytest.mark.parametrize("box", ["0,0,inf,inf", "0,0,nan,50", "-inf,0,10,10"])
def test_query_box_that_is_not_finite_is_one_error_line(small_index, box):
  result = run_command([*small_index, f"--box={box}"], timeout=600, env=tool_env())
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr == f"error: --box needs 4 finite numbers x1,y1,x2,y2 (pixels), got {box}\n"


def test_query_num_results_must_be_positive(small_index):
  for value in ("-2", "0"):
    result = run_command([*small_index, f"--num_results={value}"], timeout=600, env=tool_env())
    assert result.returncode == 1, result.stdout[-2000:]
    assert f"--num_results={value}: {value} is not a positive integer" in result.stderr
    assert "top " not in result.stdout

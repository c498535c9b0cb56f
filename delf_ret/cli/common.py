"""What every command-line tool shares: config flags, the log line printer, running ``main``.

Each tool is one module of delf_ret/cli named like its console script, with a
``main(argv) -> int`` (the exit status) and ``run()``, which is
``run_tool(main)``. The package's errors (delf_ret.errors.DelfRetError) and
missing or unreadable files (OSError) raised inside ``main`` become one line
``error: <message>`` on stderr and exit status 2; bad flags are absl usage
errors (the usage text, exit status 1). --help (-h, --helpshort, --helpfull,
--helpxml) prints the help and exits 0; Ctrl-C prints one line (INTERRUPTED)
and exits 130; TensorFlow starts without its start-up notices (quiet_tensorflow).
Library modules never import this one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import pathlib
import re
import signal
import sys
import tempfile
import threading
from typing import Callable
from typing import Iterable
from typing import Iterator
from typing import Sequence

from absl import app
from absl import flags
from tqdm import tqdm

from delf_ret import config as config_lib
from delf_ret.default_model import default_config_path
from delf_ret.errors import DelfRetError

FLAGS = flags.FLAGS
# Flags defined here belong to the tool that asks for them (and show in its --help).
flags.disclaim_key_flags()

# Exit status of a tool that could not use its input.
EXIT_UNUSABLE_INPUT = 2
# Exit status and the one line of a tool stopped by Ctrl-C (SIGINT): 128 + signal 2, as shells do.
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted; run the same command again to resume"
# absl's help flags (they exit 1 after printing; the tools exit 0).
HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml")


def define_config_flags(
  help_text: str = "DelfConfig .pbtxt file.", default_model: bool = True
) -> None:
  """Defines --config_path (with ``help_text``) and the repeatable --config_override.

  default_model: the tool falls back to the shipped default model's config
  (say so in the help).
  """
  if default_model:
    help_text += (
      " Default: the shipped default model's config (delf_ret/default_model/delf_config.pbtxt)."
    )
  flags.DEFINE_string("config_path", None, help_text)
  flags.DEFINE_multi_string(
    "config_override",
    [],
    "Override one config field, e.g. delf_local_config.max_feature_num=500 (repeatable).",
  )


def define_backend_flag() -> None:
  """Defines --backend, the extraction network back-end (compiled graph or eager baseline)."""
  flags.DEFINE_enum(
    "backend",
    "compiled",
    ["compiled", "eager"],
    "Network back-end: compiled graph (fast) or eager (baseline).",
  )


def load_config_from_flags(
  path: str | None = None, extra_overrides: Iterable[str] = ()
) -> config_lib.DelfConfig:
  """The DelfConfig at ``path`` or --config_path, else the shipped default model's config;
  with --config_override then ``extra_overrides`` applied."""
  return config_lib.load_config(
    path or FLAGS.config_path or default_config_path(), [*FLAGS.config_override, *extra_overrides]
  )


@functools.cache
def _default_config() -> config_lib.DelfConfig | None:
  """The shipped default model's config (None when it cannot be read)."""
  try:
    return config_lib.load_config(default_config_path())
  except (DelfRetError, OSError):
    return None


def _config_text(value: object) -> str:
  """A config value as the .pbtxt writes it (bools lower-case, floats in short form)."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:.6g}"
  return str(value)


def config_default_help(field_path: str) -> str:
  """Help text of a flag that overrides a config field when given, e.g. for
  ``retrieval_config.ransac_max_trials``: " Default: the config's
  retrieval_config.ransac_max_trials, 1000 in the default config."."""
  value: object = _default_config()
  for name in field_path.split("."):
    value = getattr(value, name, None)
  in_force = "" if value is None else f", {_config_text(value)} in the default config"
  return f" Default: the config's {field_path}{in_force}."


def define_progress_flag() -> None:
  """Defines --progress: a progress bar on stderr for long jobs (default: when it is a terminal)."""
  flags.DEFINE_boolean(
    "progress",
    None,
    "Show a progress bar (tqdm, on stderr) while the job "
    "runs; --noprogress silences it. Default: shown when stderr is a terminal.",
  )


class ProgressLog:
  """The tools' ``log`` callback: prints each line at once, and drives a progress bar.

  Library code reports long loops with lines starting ``[i/total]``; when the
  tool has --progress (or, by default, stderr is a terminal) those lines also
  move a tqdm bar on stderr. Other lines are printed as they are.
  """

  _STEP = re.compile(r"^\[(\d+)/(\d+)\]")

  def __init__(self):
    self.bar = None

  def _wanted(self) -> bool:
    if "progress" not in FLAGS or not FLAGS.is_parsed():
      return False
    return sys.stderr.isatty() if FLAGS.progress is None else FLAGS.progress

  def __call__(self, line: str) -> None:
    step = self._STEP.match(line)
    if step and self._wanted():
      done, total = int(step[1]), int(step[2])
      if self.bar is None or self.bar.total != total or done < self.bar.n:
        self.close()
        self.bar = tqdm(total=total, file=sys.stderr, unit="item", dynamic_ncols=True)
      self.bar.update(done - self.bar.n)
      tqdm.write(line, file=sys.stdout)
      if done == total:
        self.close()
      return
    if self.bar is not None:
      tqdm.write(line, file=sys.stdout)
    else:
      print(line, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


log = ProgressLog()


def print_error(message: object) -> int:
  """Prints ``error: <message>`` to stderr; returns the exit status of unusable input (2)."""
  print(f"error: {message}", file=sys.stderr)
  return EXIT_UNUSABLE_INPUT


def _help_from_tool_module(tool_module_name: str) -> None:
  """Makes --help of a console script show the tool's docstring and flags.

  absl's --help describes ``__main__`` and the flags of the module named by
  sys.argv[0]; for a console script those are the generated wrapper, not the tool.
  """
  tool, entry = sys.modules[tool_module_name], sys.modules["__main__"]
  if entry is tool:
    return
  entry.__doc__ = entry.__doc__ or tool.__doc__
  for flag in FLAGS.get_key_flags_for_module(tool_module_name):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)


# TensorFlow's start-up notices. As its libraries load, TensorFlow writes notices to stderr from
# C++: absl's "All log messages before absl::InitializeLog() ..." banner, INFO or WARNING lines
# (I/W, then date or 0000, time, thread, file:line]: oneDNN, cudart_stub, cpu_feature_guard with
# a second line "To enable the following instructions ..."), and without a usable GPU
# "E0000 ... failed call to cuInit". TF_CPP_MIN_LOG_LEVEL silences only part of them in
# TensorFlow 2.20 and later (the first lines come before TensorFlow reads it), so
# quiet_tensorflow() sets it and also filters these lines out of TensorFlow's first import.
NOTICE = re.compile(
  r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
  r"|[IW]\d{4} [\d:.]+ +\d+ [\w.+-]+:\d+\] "
  r"|E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"
  r"|To enable the following instructions: .* rebuild TensorFlow"
)

# The C++ log level set for the tools when the user set none: INFO and WARNING off, ERROR shown.
QUIET_LOG_LEVEL = "2"


def quiet_tensorflow() -> None:
  """Sets TF_CPP_MIN_LOG_LEVEL and filters TensorFlow's start-up notices out of its first import.

  Does nothing when the user set TF_CPP_MIN_LOG_LEVEL or TensorFlow is already imported.
  """
  if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
    return
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LOG_LEVEL
  if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _QuietFinder())


@contextlib.contextmanager
def stderr_without_notices() -> Iterator[None]:
  """Captures file descriptor 2 for the block; then writes out the lines that are not notices.

  Lines written by C++ and Python alike are captured (in a temporary file); when
  stderr cannot be captured (closed, no temporary folder), the block runs as is.
  """
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield
    return
  try:
    capture = tempfile.TemporaryFile()
  except OSError:
    os.close(saved)
    yield
    return
  with capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", errors="replace")
      kept = [line for line in text.splitlines(keepends=True) if not NOTICE.match(line)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` with the other finders, once, and loads it through _QuietLoader."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)  # Once: later imports find TensorFlow in sys.modules.
    for finder in sys.meta_path:
      find = getattr(finder, "find_spec", None)
      spec = find(fullname, path, target) if find else None
      if spec is not None:
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of ``tensorflow`` and its device discovery with notices filtered."""

  def __init__(self, loader):
    self.loader = loader

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module) -> None:
    # TensorFlow sees its own loader.
    module.__loader__ = self.loader
    if module.__spec__ is not None:
      module.__spec__.loader = self.loader
    with stderr_without_notices():
      self.loader.exec_module(module)
      # CUDA start-up (and its cuInit error without a GPU) happens on the first device
      # query; done here, inside the filter. Listing devices leaves them configurable.
      module.config.list_physical_devices()


def interrupted() -> int:
  """Prints the one line of a tool stopped by Ctrl-C; returns its exit status (130).

  A second Ctrl-C while the process exits is ignored (it would print a traceback).
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  log.close()
  print(INTERRUPTED, file=sys.stderr, flush=True)
  return EXIT_INTERRUPTED


def _interrupted_while_starting(signum, frame) -> None:
  """SIGINT handler while a tool's modules load (before run_tool): the one line, exit 130."""
  print(INTERRUPTED, file=sys.stderr, flush=True)
  raise SystemExit(EXIT_INTERRUPTED)


def _is_tool_process() -> bool:
  """True when this process runs a tool: its console script or ``python -m delf_ret.cli.<tool>``
  (argv[0] is then the script or the module's file, named like the tool)."""
  name = pathlib.Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
  if not name.isidentifier() or name in ("__init__", "common", "inputs"):
    return False
  return importlib.util.find_spec(f"delf_ret.cli.{name}") is not None


# Ctrl-C while a tool is still loading its modules ends it the same way as later (no traceback);
# run_tool gives SIGINT back to Python, whose KeyboardInterrupt lets cleanups run.
if (
  _is_tool_process()
  and threading.current_thread() is threading.main_thread()
  and signal.getsignal(signal.SIGINT) is signal.default_int_handler
):
  signal.signal(signal.SIGINT, _interrupted_while_starting)


def _help_exits_zero() -> None:
  """Defines absl's help flags now, each exiting with status 0 (not absl's 1) after its text."""

  def exit_zero(parse: Callable[[str], None], argument: str) -> None:
    try:
      parse(argument)
    except SystemExit as done:
      raise SystemExit(0 if done.code == 1 else done.code) from None

  app.define_help_flags()  # Idempotent: app.run finds them defined.
  for name in HELP_FLAGS:
    flag = FLAGS[name]
    if not isinstance(flag.parse, functools.partial):
      setattr(flag, "parse", functools.partial(exit_zero, flag.parse))


def _with_help_alias(argv: list[str]) -> list[str]:
  """``argv`` with -h (before a ``--``) read as --help."""
  end = argv.index("--") if "--" in argv else len(argv)
  return [argv[0], *("--help" if arg == "-h" else arg for arg in argv[1:end]), *argv[end:]]


def run_tool(main: Callable[[list[str]], int]) -> None:
  """Runs ``main`` with absl's flag parsing; package errors and OSError -> ``error: ...``, exit 2.

  --help, -h and --helpfull exit 0; Ctrl-C -> one line INTERRUPTED, exit 130; TensorFlow,
  when ``main`` imports it, starts without its notices (quiet_tensorflow).
  """
  _help_from_tool_module(main.__module__)
  _help_exits_zero()
  quiet_tensorflow()
  if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def guarded(argv: list[str]) -> int:
    # faiss announces its CPU build at INFO level on every start; absl would print it.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
      return main(argv)
    except (DelfRetError, OSError) as error:
      return print_error(error)
    except KeyboardInterrupt:
      return interrupted()

  try:
    app.run(guarded, argv=_with_help_alias(sys.argv))
  except KeyboardInterrupt:  # While absl parsed the flags, before main.
    sys.exit(interrupted())


def require_flags(flag_values: flags.FlagValues, *names: str) -> None:
  """Raises absl's UsageError naming the first of ``names`` that is unset."""
  for name in names:
    if not getattr(flag_values, name):
      raise app.UsageError(f"--{name} is required")


def report_failures(failures: Sequence[tuple[object, str]], what: str) -> int:
  """Prints '<n> <what> failed:' and one reason per line to stderr; returns the exit status.

  Returns 1 when there are failures, 0 otherwise.
  """
  if not failures:
    return 0
  print(f"{len(failures)} {what} failed:", file=sys.stderr)
  for _, reason in failures:
    print(f"  {reason}", file=sys.stderr)
  return 1

"""What every command-line tool shares: config flags, the log line printer, running ``main``.

Each tool is one module of delf_ret/cli named like its console script, with a
``main(argv) -> int`` (the exit status) and ``run()``, which is
``run_tool(main)``. The package's errors (delf_ret.errors.DelfRetError) and
missing or unreadable files (OSError) raised inside ``main`` become one line
``error: <message>`` on stderr and exit status 2; bad flags are absl usage
errors (the usage text, exit status 1). Library modules never import this one.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable
from typing import Iterable
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


def run_tool(main: Callable[[list[str]], int]) -> None:
  """Runs ``main`` with absl's flag parsing; package errors and OSError -> ``error: ...``, exit 2."""
  _help_from_tool_module(main.__module__)

  def guarded(argv: list[str]) -> int:
    # faiss announces its CPU build at INFO level on every start; absl would print it.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
      return main(argv)
    except (DelfRetError, OSError) as error:
      return print_error(error)

  app.run(guarded)


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

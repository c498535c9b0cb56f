"""The page's slow work (queries, gallery changes) on one worker thread, polled by job id.

One worker runs the jobs in the order they were submitted, so the index is read and
changed by one thread at a time, while the web server's threads answer pages, pictures
and polls at once. A job's state is what the page shows: "queued", "running" (with its
stage and the fraction done), "done" (with its result) or "failed" (with a one-line
message; a package error's message as it is, any other error as "internal error", with
its traceback on the server's stderr). Only the latest MAX_JOBS jobs are kept.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import secrets
import sys
import threading
import time
import traceback
from typing import Any
from typing import Callable

from delf_ret.errors import DelfRetError

MAX_JOBS = 50


@dataclasses.dataclass
class Job:
  """One unit of work and what the page may read of it (see the module docstring)."""

  job_id: str
  kind: str
  work: Callable[["Job"], Any]
  state: str = "queued"
  stage: str = "waiting for the worker"
  done: float = 0.0
  message: str | None = None
  result: Any = None
  started: float = dataclasses.field(default_factory=time.perf_counter)

  def progress(self, stage: str, done: float) -> None:
    """Called by the work: the stage it is in and the fraction done (0 to 1)."""
    self.stage, self.done = stage, min(1.0, max(0.0, done))

  def status(self) -> dict:
    """The job as the page polls it (without the result, which the caller renders)."""
    return {
      "id": self.job_id,
      "kind": self.kind,
      "state": self.state,
      "stage": self.stage,
      "done": round(self.done, 3),
      "error": self.message,
      "seconds": round(time.perf_counter() - self.started, 2),
    }


class JobRunner:
  """A worker thread running submitted jobs one at a time (daemon: it ends with the server)."""

  def __init__(self) -> None:
    self._queue: queue.Queue[Job] = queue.Queue()
    self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._thread = threading.Thread(target=self._run, name="delf-serve-worker", daemon=True)
    self._thread.start()

  def submit(self, kind: str, work: Callable[[Job], Any]) -> Job:
    """Queues ``work(job)``; its return value becomes the job's result."""
    job = Job(secrets.token_hex(8), kind, work)
    with self._lock:
      self._jobs[job.job_id] = job
      while len(self._jobs) > MAX_JOBS:
        self._jobs.popitem(last=False)
    self._queue.put(job)
    return job

  def get(self, job_id: str) -> Job | None:
    with self._lock:
      return self._jobs.get(job_id)

  def _run(self) -> None:
    while True:
      job = self._queue.get()
      job.state, job.stage, job.started = "running", "starting", time.perf_counter()
      try:
        job.result = job.work(job)
        job.state, job.stage, job.done = "done", "done", 1.0
      except (DelfRetError, OSError) as error:
        job.state, job.message = "failed", str(error)
      except Exception:  # Any other error: one line for the page, the traceback for the log.
        traceback.print_exc(file=sys.stderr)
        job.state, job.message = "failed", "internal error (see the server's log)"

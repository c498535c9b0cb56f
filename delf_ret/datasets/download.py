"""Downloading Oxford5k / Paris6k and the Revisited ground truth from their official URLs.

Layout written under ``<output_dir>/<dataset>/``:
  jpg/             every image, flattened (``<name>.jpg``);
  gt/              original ground-truth files (oxford5k, paris6k);
  gnd_<dataset>.pkl  Revisited ground truth (roxford5k, rparis6k).
Then ``read_original_gt(<..>/gt, <..>/jpg)`` or
``read_revisited_gnd(<..>/gnd_<dataset>.pkl, <..>/jpg)`` reads it.

Each file is downloaded to ``downloads/<file>.part`` (resumed with an HTTP
range request when the server allows it), renamed when complete, checked
against its SHA-256 where the digest is known (the table below, or given by
the caller), unpacked, and marked done, so an interrupted run resumes where it
stopped. A file whose digest does not match is deleted and the run fails.
Every URL is https.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from typing import Callable

from delf_ret.errors import DelfRetError

OXFORD_URL = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
PARIS_URL = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
REVISITED_URL = "https://cmp.felk.cvut.cz/revisitop/data/datasets/"


class DownloadError(DelfRetError):
  """A dataset file could not be downloaded or unpacked."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One published file: its URL, where its content goes ("jpg", "gt" or "." for as is) and,
  where known, the SHA-256 hex digest of the published file."""

  url: str
  target: str
  sha256: str | None = None

  @property
  def file_name(self) -> str:
    return self.url.rsplit("/", 1)[-1]


_OXFORD_IMAGES = RemoteFile(OXFORD_URL + "oxbuild_images-v1.tgz", "jpg")
_PARIS_IMAGES = (
  RemoteFile(PARIS_URL + "paris_1-v1.tgz", "jpg"),
  RemoteFile(PARIS_URL + "paris_2-v1.tgz", "jpg"),
)

DATASETS: dict[str, tuple[RemoteFile, ...]] = {
  "oxford5k": (_OXFORD_IMAGES, RemoteFile(OXFORD_URL + "gt_files_170407.tgz", "gt")),
  "paris6k": (*_PARIS_IMAGES, RemoteFile(PARIS_URL + "paris_120310.tgz", "gt")),
  "roxford5k": (
    _OXFORD_IMAGES,
    RemoteFile(
      REVISITED_URL + "roxford5k/gnd_roxford5k.pkl",
      ".",
      "ba7967754bd2d7d2210a5799f9c45ad5835e269a80ef9d3eba44caa35816c471",
    ),
  ),
  "rparis6k": (
    *_PARIS_IMAGES,
    RemoteFile(
      REVISITED_URL + "rparis6k/gnd_rparis6k.pkl",
      ".",
      "d2e729a5293dda7dda8a15c8383424a42e4964a2c4cfea2f32fa85d11d2df499",
    ),
  ),
}

_SUFFIXES = {"jpg": (".jpg", ".jpeg"), "gt": (".txt",)}


# Bounds of one download. The largest published file (oxbuild_images-v1.tgz) is 1.9 GB;
# 4 GiB leaves room for a mirror's recompression while an endless body stops. 4 hours lets
# the largest file arrive at 140 KB/s; a slower or stalled transfer stops there and the next
# run resumes its .part file.
MAX_DOWNLOAD_BYTES = 4 << 30
MAX_DOWNLOAD_SECONDS = 4 * 3600.0


class _Restart(DownloadError):
  """The server answered another range than asked: download_file starts the file again."""


def _resume_offset(partial: pathlib.Path, max_bytes: int, log: Callable[[str], None]) -> int:
  """Where to resume ``partial``: its size, or 0 (deleting it) when it already holds the
  most a download may have (a full .part is never appended to)."""
  offset = partial.stat().st_size if partial.exists() else 0
  if offset >= max_bytes:
    log(f"  {partial.name} already holds {offset} bytes, the most a download may have: restarting")
    partial.unlink()
    return 0
  return offset


def _range_start(response) -> int | None:
  """The first byte a 206 response holds (its Content-Range), or None when it does not say."""
  content_range = response.headers.get("Content-Range", "")
  unit, _, rest = content_range.partition(" ")
  first = rest.partition("-")[0]
  return int(first) if unit == "bytes" and first.isdigit() else None


def download_file(
  url: str,
  target: pathlib.Path,
  log: Callable[[str], None] = print,
  timeout: float = 60.0,
  chunk_bytes: int = 1 << 20,
  max_bytes: int = MAX_DOWNLOAD_BYTES,
  max_seconds: float = MAX_DOWNLOAD_SECONDS,
) -> None:
  """Downloads ``url`` to ``target`` via ``target.part``; resumes a partial download.

  timeout: seconds one network read may wait; max_seconds: the whole transfer (the
  .part file is kept, to resume). A body of more than ``max_bytes`` bytes stops the
  transfer, deletes the .part file and raises DownloadError; so does a declared length
  above it, before anything is read.
  """
  partial = target.with_name(target.name + ".part")
  target.parent.mkdir(parents=True, exist_ok=True)
  offset = _resume_offset(partial, max_bytes, log)
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  deadline = time.monotonic() + max_seconds
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      if offset and response.status == 206 and _range_start(response) != offset:
        partial.unlink(missing_ok=True)  # Not the range asked for: fetch the whole file.
        raise _Restart
      resumed = bool(offset) and response.status == 206
      done = offset if resumed else 0
      length = response.headers.get("Content-Length")
      total = done + int(length) if length and length.isdigit() else None
      if total is not None and total > max_bytes:
        raise DownloadError(
          f"downloading {url}: the server announces {total} bytes, more than the "
          f"{max_bytes} a download may have"
        )
      last_report = time.time()
      with open(partial, "ab" if resumed else "wb") as handle:
        while chunk := response.read(chunk_bytes):
          handle.write(chunk)
          done += len(chunk)
          if done > max_bytes:
            handle.close()
            partial.unlink()
            raise DownloadError(
              f"downloading {url}: more than {max_bytes} bytes, the most a download may "
              f"have; stopped and deleted {partial.name}"
            )
          if time.monotonic() > deadline:
            raise DownloadError(
              f"downloading {url}: not finished after {max_seconds:.0f} s ({done} bytes); "
              f"run again to resume"
            )
          if time.time() - last_report > 5:
            last_report = time.time()
            share = f" ({100 * done / total:.0f}%)" if total else ""
            log(f"  {target.name}: {done / 2**20:.1f} MiB{share}")
  except _Restart:
    return download_file(url, target, log, timeout, chunk_bytes, max_bytes, max_seconds)
  except urllib.error.HTTPError as error:
    if error.code == 416 and offset:  # The partial file is not a prefix the server knows.
      partial.unlink()
      return download_file(url, target, log, timeout, chunk_bytes, max_bytes, max_seconds)
    raise DownloadError(f"downloading {url} failed: {error}") from None
  except (urllib.error.URLError, OSError, ValueError) as error:
    raise DownloadError(f"downloading {url} failed: {error}; run again to resume") from None
  if total is not None and done != total:
    raise DownloadError(f"downloading {url}: got {done} of {total} bytes; run again to resume")
  partial.replace(target)


def sha256_of(path: pathlib.Path, chunk_bytes: int = 1 << 20) -> str:
  """The SHA-256 hex digest of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    while chunk := handle.read(chunk_bytes):
      digest.update(chunk)
  return digest.hexdigest()


def verify_digest(
  path: pathlib.Path, expected: str | None, log: Callable[[str], None] = print
) -> None:
  """Checks a downloaded file against its SHA-256; a mismatching file is deleted (DownloadError).

  expected None: nothing to check against; the file's digest is logged so the
  user can compare it with a trusted source (and pass it with --sha256 next time).
  """
  actual = sha256_of(path)
  if expected is None:
    log(f"{path.name}: no known SHA-256 to check (it is {actual})")
    return
  if actual != expected.lower():
    path.unlink()
    raise DownloadError(
      f"{path.name}: SHA-256 {actual} differs from the expected {expected}; "
      f"the file was deleted (a wrong or tampered mirror?)"
    )
  log(f"{path.name}: SHA-256 verified")


def unpack(archive: pathlib.Path, dataset_dir: pathlib.Path, target: str) -> int:
  """Puts the archive's files into ``dataset_dir/target``; returns how many.

  "jpg"/"gt" targets take the archive's images / text files flattened by
  name (the published archives nest them in per-landmark folders); "." copies
  the file itself.
  """
  if target == ".":
    shutil.copyfile(archive, dataset_dir / archive.name)
    return 1
  out_dir = dataset_dir / target
  out_dir.mkdir(parents=True, exist_ok=True)
  count = 0
  seen: dict[str, str] = {}  # Output name -> the member that wrote it.
  try:
    with tarfile.open(archive) as tar:
      for member in tar:
        name = pathlib.PurePosixPath(member.name).name
        if not member.isfile() or not name.lower().endswith(_SUFFIXES[target]):
          continue
        if name in seen:
          raise DownloadError(
            f"{archive}: members {seen[name]} and {member.name} would both become {target}/{name}"
          )
        seen[name] = member.name
        source = tar.extractfile(member)
        if source is None:
          raise tarfile.TarError(f"member {member.name} has no data")
        with open(out_dir / name, "wb") as handle:
          shutil.copyfileobj(source, handle)
        count += 1
  except (tarfile.TarError, EOFError, OSError) as error:
    archive.unlink(missing_ok=True)  # E.g. a resumed download whose first part was stale.
    raise DownloadError(
      f"{archive}: cannot unpack ({error}); the archive was deleted, run "
      f"again to download it afresh"
    ) from None
  return count


def download_dataset(
  name: str,
  output_dir: str | pathlib.Path,
  mirror_url: str | None = None,
  keep_archives: bool = False,
  log: Callable[[str], None] = print,
  sha256: dict[str, str] | None = None,
) -> pathlib.Path:
  """Downloads and unpacks one dataset; returns ``output_dir/name``.

  mirror_url: fetch every file as ``mirror_url/<file name>`` instead of from
    its official URL (a local mirror); digests are checked all the same.
  sha256: {file name: SHA-256 hex digest} for files the table does not know
    (or to override it); a name the dataset does not have raises DownloadError.
  Each file is bounded by MAX_DOWNLOAD_BYTES and MAX_DOWNLOAD_SECONDS (download_file).
  """
  sha256 = dict(sha256 or {})
  if name not in DATASETS:
    raise DownloadError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  file_names = [remote.file_name for remote in DATASETS[name]]
  unknown = sorted(set(sha256) - set(file_names))
  if unknown:
    raise DownloadError(
      f"--sha256 names {', '.join(unknown)}, which {name} does not have; its files are "
      f"{', '.join(file_names)}"
    )
  dataset_dir = pathlib.Path(output_dir) / name
  downloads = dataset_dir / "downloads"
  downloads.mkdir(parents=True, exist_ok=True)
  for remote in DATASETS[name]:
    marker = downloads / f"{remote.file_name}.done"
    if marker.exists():
      log(f"{remote.file_name}: already unpacked")
      continue
    url = f"{mirror_url.rstrip('/')}/{remote.file_name}" if mirror_url else remote.url
    archive = downloads / remote.file_name
    if not archive.exists():
      log(f"downloading {url}")
      download_file(url, archive, log)
    verify_digest(archive, sha256.get(remote.file_name, remote.sha256), log)
    count = unpack(archive, dataset_dir, remote.target)
    log(f"{remote.file_name}: {count} files -> {dataset_dir / remote.target}")
    marker.write_text("ok\n")
    if not keep_archives:
      archive.unlink()
  return dataset_dir

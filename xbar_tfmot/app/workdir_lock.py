"""The project's one lock: a lock file naming the process that holds it.

`FileLock(path)` writes the pid, host and start time of its holder to `path` atomically (a hard
link: never half a file). A lock whose process is gone (same host, pid no longer alive or this
very process; or a file left unreadable by a crash) is stale and is taken over, so a killed
process never blocks the next. Another host's lock is never taken over: its message says which
file to delete once that process is gone. While a live process holds it, `acquire` refuses at
once, or with `wait` retries until it is free.

`WorkdirLock(workdir)` is `workdir/lock.json`, held by `xbar-prune` for its whole run: a second
run on the same workdir refuses at once, naming the first. A benchmark whose runs share one
results file (`tools/bench_quality.py`) holds a `FileLock` with a wait around each read and write.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.export.exporter import process_alive

LOCK_NAME = "lock.json"
POLL_SECONDS = 0.05  # between two looks at a lock held by a live process, while waiting


class WorkdirBusy(XbarError, RuntimeError):
  """Another live process holds the lock (the workdir's, or another `FileLock`)."""


class FileLock:
  """`with FileLock(path, wait=60):` holds the lock file `path` for this process."""

  def __init__(self, path: str | os.PathLike, wait: float = 0.0):
    self.path = pathlib.Path(path)
    self.wait = wait  # seconds `acquire` retries while a live process holds the lock
    self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
    self._text: str | None = None  # what this process wrote, once it holds the lock

  def holder(self) -> dict | None:
    """The lock's owner as written, `{}` for an unreadable lock file, None without a lock."""
    text = self._read()
    return None if text is None else _owner(text)

  def busy_message(self, held: dict) -> str:
    """Why `acquire` gives up while the live process `held` keeps the lock."""
    return (f"{self.path} is held by process {held['pid']} on host {held.get('host')} (started "
            f"{held.get('started', '?')}); if that process is gone (another host's lock is never "
            f"taken over), delete {self.path} and rerun.")

  def acquire(self) -> None:
    """Takes the lock, or raises `WorkdirBusy` naming the live process that holds it once
    `wait` seconds have passed."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**self.owner, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
    deadline = time.monotonic() + self.wait
    try:
      tmp.write_text(text, encoding="utf-8")
      attempts = 0
      while attempts < 3:  # a lock gone or taken over since it was seen: try again
        attempts += 1
        try:
          os.link(tmp, self.path)  # atomic: fails if a lock exists, never leaves half a file
          self._text = text
          return
        except FileExistsError:
          pass
        seen = self._read()
        if seen is None:
          continue
        held = _owner(seen)
        if not self._live(held):
          self._take_over(seen)
        elif time.monotonic() < deadline:
          time.sleep(POLL_SECONDS)
          attempts = 0
        else:
          raise WorkdirBusy(self.busy_message(held))
    finally:
      tmp.unlink(missing_ok=True)
    raise WorkdirBusy(f"{self.path}: could not take the lock; other runs are starting in "
                      f"{self.path.parent} at the same time. Rerun when they have started.")

  def _read(self) -> str | None:
    try:
      return self.path.read_text(encoding="utf-8")
    except FileNotFoundError:
      return None
    except OSError:
      return ""

  def _live(self, held: dict) -> bool:
    """Whether `held` names a run that may still be running: another host's (not checkable
    from here), or a live process on this host other than this one (a restarted container
    can reuse a dead run's pid for itself)."""
    pid = held.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
      return False
    if held.get("host") != self.owner["host"]:
      return True
    return pid != os.getpid() and process_alive(pid)

  def _take_over(self, stale: str) -> None:
    """Removes the lock file judged stale from its text `stale`. It is first renamed aside
    (only one of several runs taking over at once gets it); a live lock put there since the
    judgement is put back instead."""
    aside = self.path.with_name(f".{self.path.name}.stale.{os.getpid()}")
    try:
      os.replace(self.path, aside)
    except FileNotFoundError:
      return
    try:
      if aside.read_text(encoding="utf-8") != stale:
        with contextlib.suppress(FileExistsError):
          os.link(aside, self.path)
    finally:
      aside.unlink(missing_ok=True)

  def release(self) -> None:
    """Removes the lock if this process still holds it."""
    try:
      ours = self._text is not None and self.path.read_text(encoding="utf-8") == self._text
    except OSError:
      ours = False
    if ours:
      self.path.unlink()
    self._text = None

  def __enter__(self) -> "FileLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class WorkdirLock(FileLock):
  """`with WorkdirLock(workdir):` holds the workdir for this process; refuses at once if held."""

  def __init__(self, workdir: str | os.PathLike):
    super().__init__(pathlib.Path(workdir) / LOCK_NAME)

  def busy_message(self, held: dict) -> str:
    return (f"{self.path.parent} is in use by xbar-prune process {held['pid']} on host "
            f"{held.get('host')} (started {held.get('started', '?')}); wait for it to finish, "
            f"stop it, or give another config.workdir. If that process is gone (another "
            f"host's lock is never taken over), delete {self.path} and rerun.")


def _owner(text: str) -> dict:
  """The lock file's fields, `{}` when it is not a JSON object (a crash mid-write)."""
  try:
    data = json.loads(text)
  except ValueError:
    return {}
  return data if isinstance(data, dict) else {}

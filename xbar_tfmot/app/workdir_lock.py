"""One `xbar-prune` per workdir: a lock file naming the process that holds it.

`workdir/lock.json` holds the pid, host and start time of the run that owns the folder. A
second run on the same workdir refuses at once, naming that process. A lock whose process is
gone (same host, pid no longer alive; or a file left unreadable by a crash) is stale and is
taken over, so a killed run can always be resumed.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.export.exporter import process_alive

LOCK_NAME = "lock.json"


class WorkdirBusy(XbarError, RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for this process."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
    self._text: str | None = None  # what this process wrote, once it holds the lock

  def holder(self) -> dict | None:
    """The lock's owner as written, `{}` for an unreadable lock file, None without a lock."""
    try:
      data = json.loads(self.path.read_text(encoding="utf-8"))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}
    return data if isinstance(data, dict) else {}

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**self.owner, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    for _ in range(2):
      tmp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}")
      tmp.write_text(text, encoding="utf-8")
      try:
        os.link(tmp, self.path)  # atomic: fails if a lock exists, never leaves half a file
        self._text = text
        return
      except FileExistsError:
        held = self.holder()
        if held is None:
          continue
        pid = held.get("pid")
        valid = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
        if valid and (held.get("host") != self.owner["host"] or process_alive(pid)):
          raise WorkdirBusy(
              f"{self.path.parent} is in use by xbar-prune process {pid} on host "
              f"{held.get('host')} (started {held.get('started', '?')}); wait for it to finish, "
              f"stop it, or give another config.workdir. (A lock of a process that no longer "
              f"runs on this host is taken over.)") from None
        self.path.unlink(missing_ok=True)  # stale: its process is gone, or the file is broken
      finally:
        tmp.unlink(missing_ok=True)
    raise WorkdirBusy(f"{self.path}: could not take the lock; another run is starting there.")

  def release(self) -> None:
    """Removes the lock if this process still holds it."""
    try:
      ours = self._text is not None and self.path.read_text(encoding="utf-8") == self._text
    except OSError:
      ours = False
    if ours:
      self.path.unlink()
    self._text = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

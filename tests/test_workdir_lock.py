"""One xbar-prune per workdir: a second run refuses at once naming the holder; a stale lock
(its process gone, or the file broken by a crash) is taken over. The same lock with a wait
(`FileLock`) serialises the runs that share a file."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from xbar_tfmot.app import pipeline
from xbar_tfmot.app.configuration import defaults
from xbar_tfmot.app.workdir_lock import LOCK_NAME, FileLock, WorkdirBusy, WorkdirLock


@pytest.fixture
def live_process():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def plant(workdir, **holder):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / LOCK_NAME).write_text(json.dumps(holder))


def test_lock_is_written_and_released(tmp_path):
  with WorkdirLock(tmp_path / "run"):
    held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
  assert not (tmp_path / "run" / LOCK_NAME).exists()
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_a_live_holder_is_named_and_kept(tmp_path, live_process):
  plant(tmp_path, pid=live_process, host=socket.gethostname(), started="then")
  with pytest.raises(WorkdirBusy, match=f"in use by xbar-prune process {live_process} on host "
                                        f"{socket.gethostname()}"):
    WorkdirLock(tmp_path).acquire()
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == live_process


def test_another_hosts_lock_is_respected(tmp_path):
  plant(tmp_path, pid=dead_pid(), host="elsewhere")
  with pytest.raises(WorkdirBusy, match="on host elsewhere"):
    WorkdirLock(tmp_path).acquire()


@pytest.mark.parametrize("content", ["dead", "{broken", "[1, 2]", '{"pid": -1}', '{"pid": 0}',
                                     '{"pid": "12"}'])
def test_stale_or_broken_locks_are_taken_over(tmp_path, content):
  if content == "dead":
    plant(tmp_path, pid=dead_pid(), host=socket.gethostname())
  else:
    (tmp_path / LOCK_NAME).write_text(content.replace("}", f', "host": "{socket.gethostname()}"}}')
                                      if content.startswith('{"') else content)
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_naming_this_very_process_is_stale(tmp_path):
  """A restarted container can give the new run the dead run's pid: it must not refuse itself."""
  plant(tmp_path, pid=os.getpid(), host=socket.gethostname(), started="before the restart")
  with WorkdirLock(tmp_path):
    assert "started" in json.loads((tmp_path / LOCK_NAME).read_text())
  assert not (tmp_path / LOCK_NAME).exists()


def test_take_over_puts_back_a_lock_taken_since_it_was_judged_stale(tmp_path, live_process):
  plant(tmp_path, pid=dead_pid(), host=socket.gethostname())
  stale = (tmp_path / LOCK_NAME).read_text()
  plant(tmp_path, pid=live_process, host=socket.gethostname())  # another run got in first
  WorkdirLock(tmp_path)._take_over(stale)
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == live_process
  with pytest.raises(WorkdirBusy, match=f"process {live_process}.*delete .*{LOCK_NAME}"):
    WorkdirLock(tmp_path).acquire()
  WorkdirLock(tmp_path)._take_over((tmp_path / LOCK_NAME).read_text())  # judged on its text
  assert not (tmp_path / LOCK_NAME).exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_release_leaves_a_lock_it_does_not_hold(tmp_path, live_process):
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  plant(tmp_path, pid=live_process, host=socket.gethostname())  # taken by someone else
  lock.release()
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == live_process


def test_second_pipeline_run_refuses_before_any_work(tmp_path, live_process):
  config = defaults()
  config.workdir = str(tmp_path / "run")
  config.data.name = "digits"
  plant(tmp_path / "run", pid=live_process, host=socket.gethostname())
  with pytest.raises(WorkdirBusy, match=str(live_process)):
    pipeline.run(config)
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]


class Boom(Exception):
  pass


def test_the_lock_is_released_when_the_run_inside_raises(tmp_path):
  with pytest.raises(Boom):
    with WorkdirLock(tmp_path / "run"):
      assert (tmp_path / "run" / LOCK_NAME).exists()
      raise Boom
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
  with WorkdirLock(tmp_path / "run"):  # the next run takes it at once
    pass


def test_a_pipeline_run_that_raises_leaves_no_lock(tmp_path, monkeypatch):
  """A failed run (bad data, a crash in a phase) must not leave its lock behind: the next run
  would take it over as stale only because the pid is gone, and a live pid reused by another
  process would block the workdir."""
  config = defaults()
  config.workdir = str(tmp_path / "run")
  config.data.name = "digits"
  seen = []

  def fails(self):
    seen.append(json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"])
    raise Boom("a phase failed")

  monkeypatch.setattr(pipeline.Pipeline, "_run", fails)
  with pytest.raises(Boom, match="a phase failed"):
    pipeline.run(config)
  assert seen == [os.getpid()]  # the phases ran holding the lock
  assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_holder_reads_the_lock_as_written(tmp_path):
  lock = WorkdirLock(tmp_path / "a" / "b" / "run")  # folders made as needed
  assert lock.holder() is None
  with lock:
    assert lock.holder()["pid"] == os.getpid() and "started" in lock.holder()
  assert lock.holder() is None
  (tmp_path / "a" / "b" / "run" / LOCK_NAME).write_text("{broken")
  assert lock.holder() == {}
  (tmp_path / "a" / "b" / "run" / LOCK_NAME).unlink()
  (tmp_path / "a" / "b" / "run" / LOCK_NAME).mkdir()  # unreadable as a file
  assert lock.holder() == {}


def test_pid_1_is_a_live_holder(tmp_path):
  """A run started as a container's first process has pid 1, which is always alive."""
  plant(tmp_path, pid=1, host=socket.gethostname())
  with pytest.raises(WorkdirBusy, match="process 1 on host"):
    WorkdirLock(tmp_path).acquire()


def test_release_and_take_over_of_a_lock_that_is_gone(tmp_path):
  lock = WorkdirLock(tmp_path)
  lock.acquire()
  (tmp_path / LOCK_NAME).unlink()  # deleted by hand while the run was going
  lock.release()  # nothing to remove, no error
  WorkdirLock(tmp_path)._take_over("{}")  # judged stale, gone before it was moved aside
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_removed_between_link_and_read_is_retried(tmp_path, monkeypatch):
  """A holder that releases between our failed link and our read leaves nothing to judge: the
  next attempt takes the lock."""
  link, calls = os.link, []

  def busy_once(src, dst):
    calls.append(dst)
    if len(calls) == 1:
      raise FileExistsError(dst)  # a lock was there, and is gone by the time it is read
    link(src, dst)

  monkeypatch.setattr(os, "link", busy_once)
  with WorkdirLock(tmp_path):
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
  assert len(calls) == 2


def test_gives_up_after_three_attempts_when_others_keep_taking_it(tmp_path, monkeypatch):
  attempts = []

  def always_taken(src, dst):
    attempts.append(dst)
    raise FileExistsError(dst)

  monkeypatch.setattr(os, "link", always_taken)
  with pytest.raises(WorkdirBusy, match="could not take the lock; other runs are starting"):
    WorkdirLock(tmp_path).acquire()
  assert len(attempts) == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left


def test_a_file_lock_with_a_wait_takes_the_lock_once_its_live_holder_lets_go(tmp_path,
                                                                            live_process):
  """`FileLock(path, wait=...)`, the lock runs sharing a file take (tools/bench_quality.py):
  it waits while a live process holds the lock, takes it when that one lets go, and names the
  holder when the wait runs out."""
  path = tmp_path / "results.lock"
  path.write_text(json.dumps({"pid": live_process, "host": socket.gethostname()}))
  start = time.monotonic()
  with pytest.raises(WorkdirBusy, match=f"results.lock is held by process {live_process}"):
    FileLock(path, wait=0.3).acquire()
  assert time.monotonic() - start >= 0.3
  assert json.loads(path.read_text())["pid"] == live_process
  threading.Timer(0.3, path.unlink).start()  # the holder lets go
  start = time.monotonic()
  with FileLock(path, wait=30):
    assert time.monotonic() - start >= 0.3
    assert json.loads(path.read_text())["pid"] == os.getpid()
  assert sorted(p.name for p in tmp_path.iterdir()) == []

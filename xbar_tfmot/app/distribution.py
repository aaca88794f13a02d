"""`train.strategy` of `xbar-prune`: one device, `MirroredStrategy`, `MultiWorkerMirroredStrategy`.

`multi_worker` follows TensorFlow's documented set-up: every worker runs the same command with
its own `TF_CONFIG` (`{"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker",
"index": i}}`); worker 0 (or a task of type `chief`) is the chief. The chief writes the run's
workdir; the other workers write what Keras insists on writing (saved models, state) to their
own scratch folder `workdir/workers/<type>_<index>/`, which they reset from the chief's files
when a run starts (that is how every worker resumes from the chief's checkpoints) and delete
when their part is done. The workdir must therefore be on a file system every worker sees.

A worker that dies makes the others fail instead of waiting forever: TensorFlow's health check
aborts the collectives when a peer stops answering, and every collective gives up after
`train.worker_timeout` seconds (`CommunicationOptions(timeout_seconds=...)`); the run then
raises `WorkerLost`, and rerunning the same command on every worker resumes it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from dataclasses import dataclass
from typing import Any, Iterator

from xbar_tfmot.app.configuration import ConfigError
from xbar_tfmot.app.workdir_lock import LOCK_NAME
from xbar_tfmot.core import strict_json
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.models import replicas

SCRATCH = "workers"  # under the workdir: one scratch folder per non-chief worker


class WorkerLost(XbarError, RuntimeError):
  """A collective across the workers failed: a worker died, hung or cannot be reached."""


@dataclass(frozen=True)
class Task:
  """This process's place in the cluster: `type` and `index` in `TF_CONFIG`, `workers` the
  number of training tasks (chief and workers)."""
  type: str
  index: int
  workers: int
  has_chief: bool = False

  @property
  def chief(self) -> bool:
    """TensorFlow's rule: the `chief` task, else worker 0 of a cluster without one."""
    return self.type == "chief" or (self.type == "worker" and self.index == 0
                                    and not self.has_chief)

  @property
  def name(self) -> str:
    """`type_index` (`worker_1`): the task in messages and its scratch folder's name."""
    return f"{self.type}_{self.index}"


LOCAL = Task("worker", 0, 1)


def task_from_tf_config(text: str | None) -> Task:
  """This process's `Task` from the `TF_CONFIG` JSON; errors name the variable and its field."""
  where = "TF_CONFIG (needed by config.train.strategy='multi_worker')"
  if not text:
    raise ConfigError(f"{where} is not set; valid: a JSON object like {{\"cluster\": {{\"worker\": "
                      f"[\"host1:port\", \"host2:port\"]}}, \"task\": {{\"type\": \"worker\", "
                      f"\"index\": 0}}}}, one index per worker.")
  try:
    data = strict_json.loads(text, "TF_CONFIG")
  except ValueError as e:  # a repeated key ("task" twice) too: which one was meant?
    raise ConfigError(f"{where}: not valid JSON ({e}).") from None
  cluster = data.get("cluster") if isinstance(data, dict) else None
  task = data.get("task") if isinstance(data, dict) else None
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    raise ConfigError(f"{where}: valid: an object with \"cluster\" and \"task\" objects.")
  jobs = {}
  for job in ("chief", "worker"):
    addresses = cluster.get(job, [])
    if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a
                                                  for a in addresses):
      raise ConfigError(f"{where}: cluster.{job}={addresses!r}; valid: a list of "
                        f"\"host:port\" strings.")
    jobs[job] = addresses
  if len(jobs["chief"]) > 1:
    raise ConfigError(f"{where}: cluster.chief lists {len(jobs['chief'])} tasks; valid: at most 1.")
  other = sorted(set(cluster) - {"chief", "worker"})
  if other:
    raise ConfigError(f"{where}: cluster.{other[0]}: multi_worker trains on chief and "
                      f"worker tasks only (no parameter servers or evaluators).")
  kind, index = task.get("type"), task.get("index")
  if kind not in ("chief", "worker") or not jobs[kind]:
    raise ConfigError(f"{where}: task.type={kind!r}; valid: a job of the cluster "
                      f"({', '.join(j for j in jobs if jobs[j])}).")
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
    raise ConfigError(f"{where}: task.index={index!r}; valid: 0..{len(jobs[kind]) - 1} (the "
                      f"position of this worker in cluster.{kind}).")
  return Task(kind, index, len(jobs["chief"]) + len(jobs["worker"]), bool(jobs["chief"]))


def task_of(train) -> Task:
  """This process's task under `train.strategy` (`LOCAL` unless `multi_worker`)."""
  if train.strategy != "multi_worker":
    return LOCAL
  return task_from_tf_config(os.environ.get("TF_CONFIG"))


def own_workdir(workdir: pathlib.Path, task: Task) -> pathlib.Path:
  """Where this process writes: the workdir for the chief, a scratch folder for the others."""
  return pathlib.Path(workdir) if task.chief else pathlib.Path(workdir) / SCRATCH / task.name


def remove_scratch(scratch: pathlib.Path) -> None:
  """Deletes a worker's scratch folder when its part is done (and `workers/` once empty)."""
  shutil.rmtree(scratch, ignore_errors=True)
  with contextlib.suppress(OSError):
    scratch.parent.rmdir()


def reset_scratch(workdir: pathlib.Path, scratch: pathlib.Path,
                  names: tuple[str, ...] = ("state.json", "checkpoints")) -> None:
  """Empties a worker's scratch folder and copies the chief's `names` from `workdir` into it,
  so the worker resumes where the chief's last checkpoint left off. The worker's own lock
  (`workdir_lock.LOCK_NAME`, taken before this runs) stays."""
  scratch.mkdir(parents=True, exist_ok=True)
  for entry in scratch.iterdir():
    if entry.name == LOCK_NAME:
      continue
    if entry.is_dir() and not entry.is_symlink():
      shutil.rmtree(entry)
    else:
      entry.unlink()
  for name in names:
    source = pathlib.Path(workdir) / name
    if source.is_dir():
      shutil.copytree(source, scratch / name, ignore=shutil.ignore_patterns(".*"))
    elif source.is_file():
      shutil.copy2(source, scratch / name)


def make_strategy(train) -> Any:
  """The `tf.distribute` strategy of `train.strategy` (and `train.devices`,
  `train.worker_timeout`). Unknown devices and a bad `TF_CONFIG` are `ConfigError`s."""
  import tensorflow as tf
  if train.strategy == "default":
    return tf.distribute.get_strategy()
  if train.strategy == "multi_worker":
    task_of(train)  # TF_CONFIG checked before TensorFlow reads it
    if train.devices:
      raise ConfigError(f"config.train.devices={train.devices!r}: multi_worker uses every GPU of "
                        f"each worker (or its CPU); valid: '' (choose devices per worker with "
                        f"CUDA_VISIBLE_DEVICES).")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(train.worker_timeout))
    return _checked(tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
                    train)
  devices = [d.strip() for d in train.devices.split(",") if d.strip()]
  known = {(d.device_type, int(d.name.rsplit(":", 1)[1])): d.name
           for d in tf.config.list_logical_devices()}
  for device in devices:
    try:
      spec = tf.DeviceSpec.from_string(device)
    except ValueError:
      spec = None
    if spec is None or (str(spec.device_type).upper(), spec.device_index or 0) not in known:
      raise ConfigError(f"config.train.devices={train.devices!r}: {device!r} is not a device of "
                        f"this machine; valid: {', '.join(sorted(known.values()))}.")
  return _checked(tf.distribute.MirroredStrategy(devices or None), train)


def _checked(strategy, train):
  """The strategy, once `train.batch_size` splits equally over its replicas."""
  try:
    replicas.check_batch(train.batch_size, strategy.num_replicas_in_sync)
  except replicas.ReplicaBatchError as e:
    raise ConfigError(f"config.train.batch_size={train.batch_size}: {e}") from None
  return strategy


def barrier(strategy, task: Task) -> None:
  """Returns once every worker got here (an all-reduce of one number over `strategy`); a no-op
  on one worker. After the chief wrote a file, the others may read it."""
  import tensorflow as tf
  if task.workers > 1:
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


@contextlib.contextmanager
def collectives(task: Task, workdir: pathlib.Path, timeout: float) -> Iterator[None]:
  """Turns TensorFlow's errors of a failed collective into `WorkerLost` with what to do."""
  import tensorflow as tf
  if task.workers == 1:
    yield
    return
  try:
    yield
  except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
          tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError) as e:
    first = _reason(e.message or str(e))
    raise WorkerLost(
        f"{task.name}: a collective across the {task.workers} workers failed ({type(e).__name__}: "
        f"{first}). A worker died, hung for more than config.train.worker_timeout={timeout} s, "
        f"or cannot be reached. Rerun the same command on every worker (same TF_CONFIG "
        f"cluster) to resume from the chief's last checkpoint in {workdir}.") from None


def _reason(message: str) -> str:
  """The informative line of a TensorFlow error (not `Graph execution error:` nor the node and
  traceback lines around it), shortened."""
  skip = ("Graph execution error", "Detected at node", "File ", "[[", "Additional GRPC")
  lines = [l.strip() for l in message.splitlines() if l.strip()]
  useful = [l for l in lines if not l.startswith(skip)]
  return (useful or lines or ["no message"])[0][:300]

"""`train.strategy` set-up (`xbar_tfmot.app.distribution`): TF_CONFIG read as TensorFlow reads
it, the chief chosen by TensorFlow's rule, scratch folders reset from the chief's files, and
the configs that cannot run refused naming the field."""

import itertools
import json

import pytest

from xbar_tfmot.app import configuration, distribution
from xbar_tfmot.app.configuration import ConfigError


def _tf_config(workers: int, chief: bool, kind: str, index: int) -> str:
  cluster = {"worker": [f"localhost:{2000 + i}" for i in range(workers)]}
  if chief:
    cluster["chief"] = ["localhost:1999"]
  return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_the_chief_is_the_one_tensorflow_chooses():
  from tensorflow.python.distribute import multi_worker_util
  from tensorflow.python.training import server_lib
  seen = 0
  for workers, chief in itertools.product((1, 2, 3), (False, True)):
    kinds = [("worker", i) for i in range(workers)] + ([("chief", 0)] if chief else [])
    for kind, index in kinds:
      text = _tf_config(workers, chief, kind, index)
      task = distribution.task_from_tf_config(text)
      cluster = server_lib.ClusterSpec(json.loads(text)["cluster"])
      assert task.chief == multi_worker_util.is_chief(cluster, kind, index), text
      assert task.workers == workers + chief and task.name == f"{kind}_{index}"
      seen += task.chief
  assert seen == 6  # exactly one chief per cluster


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG .* is not set; valid: a JSON object"),
    ("{cluster", "TF_CONFIG .*: not valid JSON"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}, '
     '"task": {"type": "worker", "index": 1}}', "not valid JSON .*duplicate key 'task'"),
    ('{"cluster": {"worker": ["a:1"]}}', 'valid: an object with "cluster" and "task"'),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     r'cluster.worker=\[.a.\]; valid: a list of "host:port"'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "cluster.ps: multi_worker trains on chief and worker tasks only"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "task.type='evaluator'; valid: a job of the cluster .worker."),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"task.index=2; valid: 0..1 \(the position of this worker in cluster.worker\)"),
])
def test_bad_tf_config_names_the_field(text, message):
  with pytest.raises(ConfigError, match=message):
    distribution.task_from_tf_config(text)


def test_scratch_is_reset_from_the_chiefs_files(tmp_path):
  shared = tmp_path / "run"
  (shared / "checkpoints" / "prune").mkdir(parents=True)
  (shared / "state.json").write_text('{"phases": {"baseline": {}}}')
  (shared / "checkpoints" / "baseline.keras").write_bytes(b"chief")
  (shared / "checkpoints" / "prune" / "progress.json").write_text('{"epoch": 1}')
  (shared / "checkpoints" / "prune" / ".tmp.model.keras").write_bytes(b"half")
  (shared / "report").mkdir()
  task = distribution.task_from_tf_config(_tf_config(2, False, "worker", 1))
  scratch = distribution.own_workdir(shared, task)
  assert scratch == shared / "workers" / "worker_1"
  assert distribution.own_workdir(shared, distribution.LOCAL) == shared
  (scratch / "checkpoints").mkdir(parents=True)
  (scratch / "checkpoints" / "stale.keras").write_bytes(b"old")
  (scratch / "lock.json").write_text('{"pid": 1}')  # the worker's own lock, taken before
  distribution.reset_scratch(shared, scratch)
  files = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.is_file())
  assert files == ["checkpoints/baseline.keras", "checkpoints/prune/progress.json", "lock.json",
                   "state.json"]
  assert (scratch / "checkpoints" / "baseline.keras").read_bytes() == b"chief"
  distribution.remove_scratch(scratch)
  assert not (shared / "workers").exists() and (shared / "state.json").exists()


def _config(**train):
  config = configuration.defaults()
  for key, value in train.items():
    config.train[key] = value
  return config


def test_keras3_multi_worker_is_refused_with_the_reason():
  config = _config(strategy="multi_worker")
  configuration.parse(config)
  config.flavour = "keras3"
  with pytest.raises(ConfigError, match="config.train.strategy='multi_worker' with "
                                        "config.flavour='keras3': .*keras-team/keras#20585"):
    configuration.parse(config)


@pytest.mark.parametrize("field, value, message", [
    ("strategy", "parameter_server", "config.train.strategy='parameter_server': unknown; valid: "
                                     "default, mirrored, multi_worker"),
    ("worker_timeout", 0.0, "config.train.worker_timeout=0.0: valid: a number > 0"),
])
def test_bad_strategy_fields_name_the_field(field, value, message):
  with pytest.raises(ConfigError, match=message):
    configuration.parse(_config(**{field: value}))


def test_multi_worker_needs_tf_config_and_no_device_list(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ConfigError, match="TF_CONFIG .*needed by config.train.strategy="):
    distribution.make_strategy(_config(strategy="multi_worker").train)
  monkeypatch.setenv("TF_CONFIG", _tf_config(2, False, "worker", 0))
  with pytest.raises(ConfigError, match="config.train.devices='/cpu:0': multi_worker uses every"):
    distribution.make_strategy(_config(strategy="multi_worker", devices="/cpu:0").train)
  assert distribution.task_of(_config(strategy="mirrored").train) == distribution.LOCAL


def test_a_failed_collective_becomes_worker_lost(tmp_path):
  import tensorflow as tf
  task = distribution.task_from_tf_config(_tf_config(2, False, "worker", 0))
  error = tf.errors.UnavailableError(None, None, "Graph execution error:\n\nDetected at node x\n"
                                     "cluster check alive failed, /job:worker/task:1 is down")
  with pytest.raises(distribution.WorkerLost, match=r"worker_0: a collective across the 2 "
                     r"workers failed \(UnavailableError: cluster check alive failed, "
                     r"/job:worker/task:1 is down\).*worker_timeout=60 s.*Rerun the same "
                     r"command on every worker"):
    with distribution.collectives(task, tmp_path, 60):
      raise error
  with pytest.raises(tf.errors.UnavailableError):  # one worker: TensorFlow's error as it is
    with distribution.collectives(distribution.LOCAL, tmp_path, 60):
      raise error


@pytest.mark.parametrize("batch,ok", [(33, False), (32, True)])
def test_a_batch_that_does_not_split_over_the_replicas_names_the_field(batch, ok):
  from types import SimpleNamespace
  train, strategy = SimpleNamespace(batch_size=batch), SimpleNamespace(num_replicas_in_sync=2)
  if ok:
    assert distribution._checked(strategy, train) is strategy
    return
  with pytest.raises(ConfigError, match="config.train.batch_size=33: batch_size=33 does not "
                                        "split over 2 replicas; valid: a multiple of 2"):
    distribution._checked(strategy, train)

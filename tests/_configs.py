"""xbar-prune configs for the tests: a config file's `get_config()` with field overrides."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_digits.py"


def load_config(path: pathlib.Path = TINY, **fields):
  """`get_config()` of a config file, with overrides like the command line's
  (`train__verbose=0` sets `config.train.verbose`)."""
  namespace: dict = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  config = namespace["get_config"]()
  for dotted, value in fields.items():
    node = config
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config

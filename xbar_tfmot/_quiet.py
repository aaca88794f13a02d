"""A quiet start for the command-line programs: no TensorFlow C++ log lines unless asked for.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, when it is imported, and prints its CUDA probe
lines (`cuInit`, `cudart_stub`) at that import and at its first op; on a CPU machine they
only alarm. The package imports TensorFlow, and a console script imports the package before
its `main` runs, so the package's first import goes through `program_start`. Library users
(any other program) see TensorFlow exactly as they configured it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Mapping, MutableMapping, Sequence

PROGRAMS = ("xbar-prune", "xbar-report", "xbar-verify", "xbar-eval")
TF_LOG_FLAG = "--tf-log"
TF_LOG_HELP = "show TensorFlow's C++ log lines (also: XBAR_TF_LOG=1)"


def tf_log_wanted(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> bool:
  """True when TensorFlow's C++ log lines are asked for: `--tf-log` or `XBAR_TF_LOG=1`."""
  return TF_LOG_FLAG in list(argv or ()) or environ.get("XBAR_TF_LOG", "0") not in ("", "0")


def quiet_tensorflow(argv: Sequence[str],
                     environ: MutableMapping[str, str] = os.environ) -> None:
  """`TF_CPP_MIN_LOG_LEVEL=3` unless `tf_log_wanted`; a level the user set is kept."""
  if not tf_log_wanted(argv, environ):
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def program_start() -> Iterator[None]:
  """Around the package's TensorFlow import: inside one of `PROGRAMS`, log level 3 and the
  C++ lines of the import itself (written straight to file descriptor 2) discarded."""
  argv = sys.argv or [""]
  if (os.path.basename(argv[0]) not in PROGRAMS or tf_log_wanted(argv)
      or "tensorflow" in sys.modules):
    yield
    return
  quiet_tensorflow(argv)
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)

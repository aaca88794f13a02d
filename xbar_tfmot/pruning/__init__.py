"""Crossbar pruning: the public API (`api`), the shared plan and mask maths (`plan`), one
adapter implementation for both Keras flavours (`adapter`), the flavour adapters (`tf_keras`,
`keras3`) and the callbacks. TFMOT is imported only by `tf_keras`, on first use."""

from xbar_tfmot.pruning.api import (crossbar_pruning_scope, crossbar_wrappers, prune_crossbar,
                                    strip_crossbar_pruning)
from xbar_tfmot.pruning.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning

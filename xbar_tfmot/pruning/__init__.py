"""Crossbar pruning: the public API (`api`), the shared plan and mask maths (`plan`), one
adapter implementation for both Keras flavours (`adapter`), the flavour adapters (`tf_keras`,
`keras3`) and the callbacks, and the procedures built on them: `layer_by_layer` (the paper's
procedure, one layer at a time) and `one_shot` (the exact projection of trained kernels, no
training). TFMOT is imported only by `tf_keras`, on first use."""

from xbar_tfmot.pruning.api import (crossbar_pruning_scope, crossbar_wrappers,
                                    hardware_aware_model, prune_crossbar, strip_crossbar_pruning)
from xbar_tfmot.pruning.hardware_aware import HardwareAware
from xbar_tfmot.pruning.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning

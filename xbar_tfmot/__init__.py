"""xbar_tfmot: crossbar-aware pruning and crossbar mapping for Keras models.

Importing this package never imports TFMOT: the tf_keras adapter loads it on first use, so a
Keras 3 user's `tf.keras` is left alone. It imports the Keras 3 adapter, which registers the
Keras 3 wrapper and schedules as serialisables, so pruned `.keras` files load without a scope.
"""

from xbar_tfmot.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning
from xbar_tfmot.channels import ChannelGraph, ChannelSpace, analyze
from xbar_tfmot.explicit import crossbar_model
from xbar_tfmot.exporting import ExportError, export, read_mapping
from xbar_tfmot.geometry import Counts, LayerGeometry
from xbar_tfmot.mapping import CrossbarMapping, MappingError, build_mapping
from xbar_tfmot.packing import LayerPacking, pack_layer
from xbar_tfmot.policy import CrossbarPolicy
from xbar_tfmot.projection import crossbar_budget, project, stateless_seed
from xbar_tfmot.pruning import (crossbar_pruning_scope, crossbar_wrappers, prune_crossbar,
                                strip_crossbar_pruning)
from xbar_tfmot.reorder import ReorderResult, project_permuted, reorder_model
from xbar_tfmot.report import CrossbarReport, LayerReport, crossbar_report
from xbar_tfmot.schedules import (CrossbarConstant, CrossbarPolynomialDecay,
                                  CrossbarTemperatureDecay)
from xbar_tfmot.spec import CrossbarSpec
from xbar_tfmot.verification import verify

try:  # registers the Keras 3 serialisables; Keras 3 is a dependency, but keep the core importable
  from xbar_tfmot import pruning_keras3 as _pruning_keras3  # noqa: F401
except ImportError:  # pragma: no cover
  pass

__all__ = [
    "ChannelGraph", "ChannelSpace", "Counts", "CrossbarConstant", "CrossbarMapping",
    "CrossbarPolicy", "CrossbarPolynomialDecay", "CrossbarPruningSummaries", "CrossbarReport",
    "CrossbarSpec", "CrossbarTemperatureDecay", "ExportError", "LayerGeometry", "LayerPacking",
    "LayerReport", "MappingError", "ReorderResult", "UpdateCrossbarPruning", "analyze",
    "build_mapping", "crossbar_budget", "crossbar_model", "crossbar_pruning_scope",
    "crossbar_wrappers", "export",
    "pack_layer", "project", "project_permuted", "prune_crossbar", "read_mapping",
    "reorder_model", "stateless_seed", "strip_crossbar_pruning", "verify", "crossbar_report",
]

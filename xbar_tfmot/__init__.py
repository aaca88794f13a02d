"""xbar_tfmot: crossbar-aware pruning and crossbar mapping for Keras models.

The public API, one import away. The code is tiered (docs/design.md, "The tiers of the code"):
`core` (crossbar maths and the mapping document, no Keras), `models` (reading and rewriting
Keras models), `pruning` (the two flavour adapters over one implementation), `export`, and
the application `app` (`xbar-prune`), which the library never imports.

Every procedure is here, the application only orchestrates them: `prune_crossbar` (LGD-RPP,
every layer at once), `prune_layer_by_layer` (the paper's procedure, one layer at a time under
`StopRules`), `one_shot_masks` / `apply_masks` (the exact projection of trained kernels, no
training; `one_shot_budgets`; `gradual_cut` along the schedule's ramp), `choose_allocation`
(candidate policies cut without training and scored on validation images),
`compensate_chip` (BatchNorm, output gains and ADC ranges re-estimated on a programmed chip)
and `sweep_hardware` (accuracy on simulated chips, one non-ideality at a time, over
`sweep_conditions`; `hardware_cost_summary` for the chip's cost).

Importing this package never imports TFMOT: the tf_keras adapter loads it on first use, so a
Keras 3 user's `tf.keras` is left alone. It imports the Keras 3 adapter, which registers the
Keras 3 wrapper and schedules as serialisables, so pruned `.keras` files load without a scope.
"""

from xbar_tfmot import _quiet

with _quiet.program_start():
  import tensorflow as _tf  # noqa: F401  (first, so that the console scripts start quietly)

from xbar_tfmot.core.errors import (GeometryError, ModelError, NotKerasObjectError, PolicyError,
                                    PruningConfigError, ScheduleError, SpecError,
                                    UnknownLayerError, XbarError)
from xbar_tfmot.core.cost import CostReport, estimate_cost
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.geometry import Counts, LayerGeometry
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.core.packing import LayerPacking, pack_layer
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget, project, stateless_seed
from xbar_tfmot.core.schedules import (CrossbarConstant, CrossbarPolynomialDecay,
                                       CrossbarTemperatureDecay)
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export.exporter import ExportError, export, read_mapping
from xbar_tfmot.export.int8 import QuantizationError, quantize_aware
from xbar_tfmot.export.verification import tflite_accuracy, verify
from xbar_tfmot.models.batchnorm import recalibrate_batchnorm
from xbar_tfmot.models.channels import ChannelGraph, ChannelSpace, analyze
from xbar_tfmot.models.analog_model import analog_accuracy, analog_model, output_positions
from xbar_tfmot.models.compensation import compensate_chip
from xbar_tfmot.models.crossbar_model import crossbar_model
from xbar_tfmot.models.dead_channels import (DeadChannelReport, find_dead_channels,
                                             remove_dead_channels)
from xbar_tfmot.models.hardware_sweep import Condition as SweepCondition
from xbar_tfmot.models.hardware_sweep import conditions as sweep_conditions
from xbar_tfmot.models.hardware_sweep import cost_summary as hardware_cost_summary
from xbar_tfmot.models.hardware_sweep import sweep as sweep_hardware
from xbar_tfmot.models.model_mapping import build_mapping, validate_mapping
from xbar_tfmot.models.reorder import ReorderResult, project_permuted, reorder_model
from xbar_tfmot.models.report import CrossbarReport, LayerReport, crossbar_report
from xbar_tfmot.pruning import (CrossbarPruningSummaries, HardwareAware, UpdateCrossbarPruning,
                                crossbar_pruning_scope, crossbar_wrappers, hardware_aware_model,
                                prune_crossbar, strip_crossbar_pruning)
from xbar_tfmot.pruning.allocation import crossbar_costs
from xbar_tfmot.pruning.distillation import (DistillationLoss, distillation_accuracy,
                                             teacher_targets)
from xbar_tfmot.pruning.layer_by_layer import (LayerByLayerError, LayerOutcome, StopRules,
                                               prune_layer_by_layer)
from xbar_tfmot.pruning.one_shot import (apply_masks, gradual_cut, one_shot_budgets,
                                         one_shot_masks)
from xbar_tfmot.pruning.selection import AllocationChoice, candidate_policy, choose_allocation
from xbar_tfmot.pruning.sensitivity import sensitivity_curves

try:  # registers the Keras 3 serialisables; Keras 3 is a dependency, but keep the core importable
  from xbar_tfmot.pruning import keras3 as _keras3  # noqa: F401
except ImportError:  # pragma: no cover
  pass

__all__ = [
    "CostReport", "crossbar_costs", "HardwareAware", "HardwareError", "HardwareSpec", "analog_accuracy",
    "analog_model", "hardware_aware_model",
    "estimate_cost", "output_positions", "SweepCondition", "hardware_cost_summary",
    "sweep_conditions", "sweep_hardware", "LayerByLayerError", "LayerOutcome", "StopRules",
    "prune_layer_by_layer", "apply_masks", "gradual_cut", "one_shot_budgets", "one_shot_masks",
    "AllocationChoice", "candidate_policy", "choose_allocation",
    "DeadChannelReport", "find_dead_channels", "remove_dead_channels",
    "ChannelGraph", "ChannelSpace", "Counts", "CrossbarConstant", "CrossbarMapping",
    "CrossbarPolicy", "CrossbarPolynomialDecay", "CrossbarPruningSummaries", "CrossbarReport",
    "CrossbarSpec", "CrossbarTemperatureDecay", "DistillationLoss", "ExportError",
    "LayerGeometry", "LayerPacking",
    "LayerReport", "MappingError", "ReorderResult", "UpdateCrossbarPruning", "XbarError",
    "analyze", "build_mapping", "crossbar_budget", "crossbar_model", "crossbar_pruning_scope",
    "crossbar_report", "crossbar_wrappers", "distillation_accuracy", "export", "pack_layer",
    "project",
    "project_permuted", "prune_crossbar", "read_mapping", "recalibrate_batchnorm", "reorder_model",
    "quantize_aware", "sensitivity_curves", "stateless_seed", "strip_crossbar_pruning",
    "teacher_targets", "tflite_accuracy", "validate_mapping", "verify",
    # the errors (every one an XbarError; the list: xbar_tfmot/core/errors.py)
    "GeometryError", "ModelError", "NotKerasObjectError", "PolicyError", "PruningConfigError",
    "QuantizationError", "ScheduleError", "SpecError", "UnknownLayerError",
]

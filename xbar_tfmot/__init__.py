"""xbar_tfmot: crossbar-aware pruning and crossbar mapping for Keras models.

Importing this package never imports TFMOT: the tf_keras adapters load it on first use, so a
Keras 3 user's `tf.keras` is left alone.
"""

from xbar_tfmot.geometry import Counts, LayerGeometry
from xbar_tfmot.projection import crossbar_budget, project, stateless_seed
from xbar_tfmot.spec import CrossbarSpec

__all__ = [
    "Counts",
    "CrossbarSpec",
    "LayerGeometry",
    "crossbar_budget",
    "project",
    "stateless_seed",
]

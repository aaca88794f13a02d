"""Knowledge distillation with plain `model.fit`, either Keras flavour.

The teacher (the dense or reordered model) is run once over the training images and its
logits are packed next to the labels: `y_packed = [label, teacher logits...]`
(`teacher_targets`). The student is compiled with `DistillationLoss` and, for accuracy,
`distillation_accuracy`, and fitted on `(x, y_packed)` like any model, with the pruning
callbacks as usual. No subclassed model or custom `train_step` is needed, so it works the same
on tf_keras and Keras 3, under distribution strategies, and the loss serialises
(`get_config`; registered as a Keras 3 serialisable and in the tf_keras loading scope).

Per sample, with student logits `s`, teacher logits `t`, temperature `T` and weight `w`:

  `loss = (1 - w) * CE(label, s) + w * T**2 * KL(softmax(t / T) || softmax(s / T))`

(Hinton et al.'s soft-target loss; `T**2` keeps the soft term's gradient scale independent of
`T`). `w = 0` is the plain sparse cross-entropy, so training is then exactly plain training.

The teacher's outputs are computed once per image: with random data augmentation the
augmented view would need the teacher's output on that view (not provided here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.models import replicas


def teacher_targets(teacher: Any, x: Any, y: Any, batch_size: int = 256,
                    from_logits: bool = True) -> np.ndarray:
  """`(n, 1 + classes)` float32: each label followed by the teacher's logits on that image.

  `from_logits=False` when the teacher ends in a softmax (its log-probabilities are used).
  """
  y = np.asarray(y).reshape(-1)
  outputs = np.asarray(replicas.predict(teacher, x, batch_size), np.float32)
  if outputs.ndim != 2 or len(outputs) != len(y):
    raise PruningConfigError(
        f"teacher_targets: the teacher's outputs have shape {outputs.shape}; valid: "
        f"(n, classes) with n = {len(y)} labels.")
  if not from_logits:
    outputs = np.log(np.clip(outputs, 1e-12, None))
  return np.concatenate([y[:, None].astype(np.float32), outputs], axis=1)


def _split(y_true, y_pred):
  y_true = tf.convert_to_tensor(y_true)
  y_pred = tf.convert_to_tensor(y_pred)
  labels = tf.cast(tf.round(y_true[:, 0]), tf.int32)
  return labels, tf.cast(y_true[:, 1:], y_pred.dtype), y_pred


class DistillationLoss:
  """`loss(y_packed, y_pred)` per sample: cross-entropy to the label and soft-target KL to the
  teacher (module docstring). Pass it to `model.compile(loss=...)` in either flavour.

  Args:
    temperature: `T > 0`, softens both distributions in the KL term.
    weight: `0 <= w <= 1`, the share of the teacher term (0: plain training).
    from_logits: whether the student outputs logits (`False`: probabilities).
  """

  def __init__(self, temperature: float = 4.0, weight: float = 0.5, from_logits: bool = True,
               name: str = "distillation_loss"):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
        or not temperature > 0:
      raise PruningConfigError(
          f"DistillationLoss: temperature={temperature!r} is invalid; valid: > 0.")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
      raise PruningConfigError(
          f"DistillationLoss: weight={weight!r} is invalid; valid: 0 <= weight <= 1.")
    self.temperature = float(temperature)
    self.weight = float(weight)
    self.from_logits = bool(from_logits)
    self.name = name
    self.__name__ = name  # Keras names the loss after its function

  def __call__(self, y_true, y_pred):
    labels, teacher, student = _split(y_true, y_pred)
    if not self.from_logits:
      student = tf.math.log(tf.clip_by_value(student, 1e-12, 1.0))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=student)
    t = self.temperature
    soft_teacher = tf.nn.softmax(teacher / t, axis=-1)
    kl = tf.reduce_sum(soft_teacher * (tf.nn.log_softmax(teacher / t, axis=-1)
                                       - tf.nn.log_softmax(student / t, axis=-1)), axis=-1)
    return (1.0 - self.weight) * ce + self.weight * (t * t) * kl

  def get_config(self) -> dict[str, Any]:
    return {"temperature": self.temperature, "weight": self.weight,
            "from_logits": self.from_logits, "name": self.name}

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  def __repr__(self):
    return (f"DistillationLoss(temperature={self.temperature}, weight={self.weight}, "
            f"from_logits={self.from_logits})")


def distillation_accuracy(y_true, y_pred):
  """Accuracy against the labels of packed targets (`teacher_targets`)."""
  labels, _, student = _split(y_true, y_pred)
  return tf.cast(tf.equal(tf.argmax(student, axis=-1, output_type=tf.int32), labels), tf.float32)

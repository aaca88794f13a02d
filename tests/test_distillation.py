"""Knowledge distillation through model.fit in both flavours: weight 0 is plain training; the
soft term is the temperature-scaled KL to the teacher; the loss serialises."""

import _pruning_models as pm
import numpy as np
import pytest
import tensorflow as tf

import xbar_tfmot as xt
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.pruning.api import FLAVOURS

X, Y = pm.digits(320)


def fit(model, loss, y, metrics):
  keras = keras_module(pm.xlayers.flavour(model))
  model.compile(keras.optimizers.Adam(3e-3), loss, metrics=metrics)
  model.fit(X, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
  return model


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_weight_zero_equals_plain_training(flavour):
  keras = keras_module(flavour)
  teacher = pm.cnn(seed=5, flavour=flavour)
  packed = xt.teacher_targets(teacher, X, Y)
  assert packed.shape == (len(Y), 11) and np.array_equal(packed[:, 0], Y)
  plain = fit(pm.cnn(seed=1, flavour=flavour),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True), Y, ["accuracy"])
  distilled = fit(pm.cnn(seed=1, flavour=flavour), xt.DistillationLoss(temperature=3.0, weight=0.0),
                  packed, [xt.distillation_accuracy])
  for a, b in zip(plain.weights, distilled.weights):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  # and a weight > 0 does change training
  other = fit(pm.cnn(seed=1, flavour=flavour), xt.DistillationLoss(temperature=3.0, weight=0.5),
              packed, [xt.distillation_accuracy])
  assert not np.allclose(np.asarray(other.weights[0]), np.asarray(plain.weights[0]), atol=1e-4)


def test_the_loss_is_the_formula():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 8)
  teacher, student = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
  packed = np.concatenate([labels[:, None], teacher], 1).astype("float32")
  t, w = 2.5, 0.3

  def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))

  ce = -log_softmax(student)[np.arange(8), labels]
  p = np.exp(log_softmax(teacher / t))
  kl = (p * (log_softmax(teacher / t) - log_softmax(student / t))).sum(1)
  got = np.asarray(xt.DistillationLoss(t, w)(packed, student.astype("float32")))
  np.testing.assert_allclose(got, (1 - w) * ce + w * t * t * kl, rtol=1e-4)
  # a student that equals its teacher pays no soft term
  same = np.asarray(xt.DistillationLoss(t, 1.0)(packed, teacher.astype("float32")))
  np.testing.assert_allclose(same, 0.0, atol=1e-5)
  probs = np.exp(log_softmax(student)).astype("float32")
  np.testing.assert_allclose(np.asarray(xt.DistillationLoss(t, w, from_logits=False)(packed, probs)),
                             got, rtol=1e-3)
  acc = np.asarray(xt.distillation_accuracy(packed, student.astype("float32")))
  np.testing.assert_array_equal(acc, (student.argmax(1) == labels).astype("float32"))


def test_serialisable_and_checked(tmp_path):
  import keras
  loss = xt.DistillationLoss(temperature=2.0, weight=0.25)
  assert xt.DistillationLoss.from_config(loss.get_config()).get_config() == loss.get_config()
  back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
  assert back.get_config() == loss.get_config()
  model = pm.cnn(flavour="keras3")
  model.compile("adam", loss, metrics=[xt.distillation_accuracy])
  model.save(tmp_path / "m.keras")
  loaded = keras.saving.load_model(tmp_path / "m.keras")
  assert loaded.loss.get_config() == loss.get_config()
  for bad in ({"temperature": 0.0}, {"weight": 1.5}):
    with pytest.raises(ValueError, match="is invalid"):
      xt.DistillationLoss(**bad)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_teacher_targets_are_the_labels_then_the_teachers_logits_row_by_row(flavour):
  """Every row holds its own image's label and teacher logits (batches of 128 over 320 images,
  the last one padded); a softmax teacher (`from_logits=False`) gives log-probabilities."""
  keras = keras_module(flavour)
  teacher = pm.cnn(seed=5, flavour=flavour)
  logits = np.asarray(teacher(X, training=False))
  packed = xt.teacher_targets(teacher, X, Y, batch_size=128)
  np.testing.assert_array_equal(packed[:, 0], Y)
  np.testing.assert_allclose(packed[:, 1:], logits, rtol=1e-5, atol=1e-5)
  soft = keras.Sequential([teacher, keras.layers.Softmax()])
  from_probs = xt.teacher_targets(soft, X, Y, batch_size=128, from_logits=False)
  np.testing.assert_allclose(from_probs[:, 1:], np.asarray(tf.nn.log_softmax(logits)),
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="teacher's outputs have shape"):
    xt.teacher_targets(teacher, X, Y[:-1])


def test_a_distilled_student_follows_its_teacher():
  """Weight 1 trains on the teacher alone: a student distilled from a teacher that disagrees
  with the labels ends up agreeing with the teacher more than with the labels, and more than
  a plainly trained student does."""
  keras = keras_module("keras3")
  teacher = pm.cnn(seed=5, flavour="keras3")
  wrong = (Y + 1) % 10  # the teacher learns labels shifted by one
  fit(teacher, keras.losses.SparseCategoricalCrossentropy(from_logits=True), wrong, [])
  for _ in range(4):
    teacher.fit(X, wrong, batch_size=32, epochs=1, verbose=0)
  taught = np.argmax(np.asarray(teacher(X)), -1)
  assert np.mean(taught == wrong) > 0.6
  packed = xt.teacher_targets(teacher, X, Y)

  def agreement(loss, y):
    """(agreement with the teacher, with the labels) after 5 epochs of training on `y`."""
    model = fit(pm.cnn(seed=1, flavour="keras3"), loss, y, [])
    model.fit(X, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    pred = np.argmax(np.asarray(model(X)), -1)
    return np.mean(pred == taught), np.mean(pred == Y)

  s_teacher, s_labels = agreement(xt.DistillationLoss(2.0, 1.0), packed)
  p_teacher, _ = agreement(keras.losses.SparseCategoricalCrossentropy(from_logits=True), Y)
  assert s_teacher > s_labels and s_teacher > p_teacher + 0.3, (s_teacher, s_labels, p_teacher)

"""A user's own layer, one per Keras flavour, for the custom-objects tests (`--custom-objects
_custom_layers` imports this module)."""

import keras
import tf_keras


class Scale(keras.layers.Layer):
  """Multiplies by a learned per-channel factor (like ConvNeXt's LayerScale)."""

  def build(self, input_shape):
    self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

  def call(self, x):
    return x * self.gamma


class TfScale(tf_keras.layers.Layer):
  """`Scale` for tf_keras."""

  def build(self, input_shape):
    self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

  def call(self, x):
    return x * self.gamma

"""A tiny run for tests: scikit-learn digits (8x8), a narrow VGG8, 72x4 crossbars; seconds.

Small batches give BatchNorm enough steps for its moving statistics to settle.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "tiny_digits"
  c.data.name = "digits"
  c.model.name = "vgg8"
  c.model.width = 0.125
  c.chip.spec = "72x4,mapping=direct,kin=8,kout=4"
  c.chip.granularity = "column"
  c.allocation.reduction = 0.6
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.finetune_learning_rate = 1e-3
  c.train.baseline_epochs = 4
  c.schedule.prune_epochs = 2
  c.schedule.finetune_epochs = 1
  c.train.verbose = 2
  return c

"""CIFAR-10 VGG8 (the paper's CIFAR setting): 128x128 crossbars, 8-bit weights in 2-bit
differential cells (the ISAAC preset), crossbar grain, 72% fewer crossbars.

Needs CIFAR-10: a local `cifar-10-batches-py` folder (`--config.data.path=...`, default
Keras' cache `~/.keras/datasets/cifar-10-batches-py`) or `--config.data.download=True`.
Sized for a GPU or a long CPU run.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "cifar10_vgg8"
  c.data.name = "cifar10"
  c.model.name = "vgg8"
  c.model.width = 1.0
  c.chip.spec = "isaac_128x128"
  c.chip.granularity = "crossbar"
  c.allocation.reduction = 0.72
  c.allocation.reorder = True
  c.train.batch_size = 128
  c.train.baseline_epochs = 30
  c.schedule.prune_epochs = 15
  c.schedule.finetune_epochs = 10
  return c

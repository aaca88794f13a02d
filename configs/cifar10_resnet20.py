"""CIFAR-10 ResNet-20 (the paper's other CIFAR network): semi-folded 144x4 crossbars (Kin 16,
Kout 4), column grain with output recombination and reorder, 72% fewer crossbars.

Needs CIFAR-10 as `cifar10_vgg8.py` does. Sized for a GPU or a long CPU run.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "cifar10_resnet20"
  c.data.name = "cifar10"
  c.model.name = "resnet20"
  c.model.width = 1.0
  c.chip.spec = "semi_folded_k16x4"
  c.chip.granularity = "column"
  c.allocation.reduction = 0.72
  c.allocation.reorder = True
  c.train.batch_size = 128
  c.train.baseline_epochs = 40
  c.schedule.prune_epochs = 20
  c.schedule.finetune_epochs = 10
  return c

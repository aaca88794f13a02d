"""Default: Fashion-MNIST, a small VGG8-style CNN, semi-folded crossbars, column grain + reorder.

Runs end to end in a few minutes on 2 CPU cores: `xbar-prune --config configs/fashion_mnist_vgg8.py`.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "fashion_mnist_vgg8"
  c.data.name = "fashion_mnist"
  c.model.name = "vgg8"
  c.model.width = 0.25
  c.crossbar.spec = "semi_folded_k16x4"
  c.crossbar.granularity = "column"
  c.crossbar.reduction = 0.72
  c.crossbar.reorder = True
  c.train.baseline_epochs = 3
  c.train.prune_epochs = 2
  c.train.finetune_epochs = 1
  return c

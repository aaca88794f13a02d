"""Default: Fashion-MNIST, a small VGG8-style CNN, semi-folded crossbars, column grain + reorder,
85% fewer crossbars, allocated by the candidate policy that scores best, after 32 masked
fine-tuning steps, on 512 training images held out of training (allocation.mode="validated", docs/design.md).

Runs end to end in a few minutes on 2 CPU cores: `xbar-prune --config configs/fashion_mnist_vgg8.py`.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "fashion_mnist_vgg8"
  c.data.name = "fashion_mnist"
  c.data.train_size = 20000  # a third of the training images: the run stays under 5 minutes
  c.model.name = "vgg8"
  c.model.width = 0.25
  c.chip.spec = "semi_folded_k16x4"
  c.chip.granularity = "column"
  c.allocation.reduction = 0.85
  c.allocation.mode = "validated"  # per_layer, global_score x 4 scores, sensitivity: one wins
  c.allocation.reorder = True
  c.train.bn_recalibration_images = 5000  # BatchNorm statistics re-estimated before evaluating
  c.train.baseline_epochs = 3
  c.schedule.prune_epochs = 2
  c.schedule.finetune_epochs = 1
  return c

"""ImageNet-shaped VGG16 (or `--config.model.name=resnet18`) for mapping only: no data, no
training; the exact projection at 70% fewer crossbars on 128x128 ISAAC-style crossbars, then
the report and the mapping JSON (`report/mapping.json`). The weights are Keras' random
initialisation, so the counts are what matters here, not the accuracy.
"""

from xbar_tfmot.app.configuration import defaults


def get_config():
  c = defaults()
  c.name = "imagenet_mapping"
  c.data.name = "none"
  c.model.name = "vgg16"
  c.model.input_shape = "224,224,3"
  c.model.classes = 1000
  c.chip.spec = "isaac_128x128"
  c.chip.granularity = "column"
  c.allocation.reduction = 0.7
  c.allocation.reorder = False
  c.train.baseline_epochs = 0
  c.schedule.prune_epochs = 0
  c.schedule.finetune_epochs = 0
  c.export.enabled = False
  return c

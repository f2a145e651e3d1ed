"""NHL on the paper's CIFAR-10 protocol: one supervised run (CSQ) emits 16/32/64/128-bit nested
codes with dominance-aware weights and long->short cascade distillation, on cached features of
a frozen ImageNet EfficientNet-Lite2 (``common.frozen_heads``; offline), mAP@1000 per length.
"""

from configs import base, common


def get_config():
  config = common.paper_protocol(common.frozen_heads(base.get_config(), "efficientnet_lite2"))
  config.model.bit_list = (16, 32, 64, 128)
  config.loss.name = "csq"
  config.loss.quant_weight = 1e-4  # CSQ's lambda on ||u| - 1|^2
  config.loss.balance_weight = 0.0
  config.loss.dominance_weights = True
  config.loss.distill_weight = 1.0
  config.train.steps = 2000  # ~100 epochs of the 5,000 training images at batch 256
  return config

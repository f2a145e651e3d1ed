"""The shared CIFAR-10 prefix (../shared/data/cifar10_prefix.npz: 1,017 queries, 5,085 database =
training images) on a frozen ImageNet EfficientNet-Lite0: heads trained on cached features
(``common.frozen_heads``), mAP@1000.  The photo walkthrough of the README trains this one.
"""

from configs import base, common


def get_config():
  config = common.frozen_heads(base.get_config(), "efficientnet_lite0")
  config.dataset.name = "npz:" + common.shared_data("cifar10_prefix.npz")
  return config

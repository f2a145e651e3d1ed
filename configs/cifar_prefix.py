"""The shared real CIFAR-10 prefix (../shared/data/cifar10_prefix.npz), small CNN, NSH.

1,017 test images are the queries; 5,085 training images are database and
training set; mAP@1000.  Settings found by the experiments in docs/training.md.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "npz:../shared/data/cifar10_prefix.npz"
  config.dataset.min_scale = 0.3
  config.train.steps = 2000
  config.train.batch_size = 128
  config.train.warmup_steps = 100
  config.train.checkpoint_every = 250
  config.train.log_every = 100
  return config

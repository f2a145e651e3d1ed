"""NUS-WIDE-21 from a user-provided directory (HashNet lists), VGG-16, mAP@5000.

Set --config.dataset.data_dir=DIR holding train.txt, test.txt, database.txt and
the images (no TFDS builder exists for NUS-WIDE).
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.dataset.name = "nus_wide"
  config.dataset.download = False
  config.eval.top_k = 5000
  config.train.steps = 200 * 10500 // 64
  return config

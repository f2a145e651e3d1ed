"""MS-COCO from a user-provided directory (HashNet lists), VGG-16, mAP@5000."""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.dataset.name = "coco"
  config.dataset.download = False
  config.eval.top_k = 5000
  config.train.steps = 200 * 10000 // 64
  return config

"""NHL on the paper's protocol: one supervised run (CSQ base) emits 16/32/64/128-bit
nested codes.  TFDS CIFAR-10 (1,000 / 59,000 / 5,000), ImageNet-pretrained VGG-16
(fc7, frozen), 224x224, mAP@1000 for every length.

Needs internet once (TFDS download and the Keras VGG16 weights).  Offline, the
same recipe on the shared CIFAR-10 prefix is ``benchmarks/nested.py``.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.model.bit_list = (16, 32, 64, 128)
  config.loss.name = "csq"
  config.loss.quant_weight = 1e-4  # CSQ's lambda on ||u| - 1|^2
  config.loss.balance_weight = 0.0
  config.loss.dominance_weights = True
  config.loss.distill_weight = 1.0
  config.train.learning_rate = 1e-4
  config.train.steps = 100 * 5000 // 64  # 100 epochs of the 5,000 training images
  return config

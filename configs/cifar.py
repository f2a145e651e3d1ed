"""The paper's protocol (NSH, IJCAI 2022): TFDS CIFAR-10, ImageNet-pretrained VGG-16
(fc7, frozen), 224x224, 1,000 queries / 59,000 database / 5,000 train, mAP@1000.

Needs internet once (TFDS download and the Keras VGG16 weights).  Reported by the
paper at 16/32/64 bits: .706 / .733 / .756.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset.name = "cifar10"
  config.dataset.download = True
  config.dataset.image_size = 224
  config.dataset.normalization = "caffe"
  config.dataset.min_scale = 0.2
  config.model.backbone = "vgg16"
  config.model.pretrained = True
  config.model.frozen = True
  config.model.latent_dim = 1024
  config.loss.temperature = 0.3
  config.loss.sort_temperature = 1.0
  config.loss.quant_weight = 1.0
  config.train.batch_size = 64
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 1e-5
  config.train.steps = 200 * 5000 // 64  # 200 epochs of the 5,000 training images
  config.train.warmup_steps = 500
  config.train.checkpoint_every = 1000
  config.train.log_every = 100
  config.train.eval_every = 5000
  return config

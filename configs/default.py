"""The first run: scikit-learn's bundled digits, a small CNN trained from scratch,
NSH with its instance terms, 16/32/64-bit codes (one nested head), ITQ on the
learned hash layer, 40 epochs.  Needs no download; about 5 minutes on a 2-core CPU.

``--config=configs/default.py:PRESET`` picks the augmentation preset of
``base.AUGMENTATIONS``: ``digits`` (the default: crops, no flips, no colour
jitter) or ``natural`` (photos: MoCo-v2).  Point it at your own small dataset with
``--config.dataset.name=folder:PATH`` (or ``npz:``/``lists:``); how the recipe holds on data
it was not chosen on: docs/results/first_run.md.
"""

from configs import base

VARIANTS = tuple(base.AUGMENTATIONS)


def get_config(preset: str = "digits"):
  config = base.augmentation(base.get_config(), preset)
  config.model.bit_list = (16, 32, 64)
  # From scratch the codes rank candidates at random, so SortedNCE alone has no
  # anchor: the two views as explicit positives (latents and sign codes) give it one.
  config.loss.instance_weight = 1.0
  config.loss.code_instance_weight = 1.0
  # The learned hash layer, rotated by ITQ onto its signs (fitted on the training split).
  config.quantizer = "itq"
  # In passes over the data, so that the recipe scales with the dataset it is pointed at;
  # 40 was chosen on validation queries of three datasets (docs/results/first_run.md).
  config.train.steps = 0
  config.train.epochs = 40.0
  config.train.checkpoint_every = 150
  config.train.log_every = 75
  return config

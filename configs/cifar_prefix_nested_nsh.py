"""Nested NSH (unsupervised, several code lengths from one run) on the shared
CIFAR-10 prefix: SortedNCE per length on the nested head, dominance-aware
weights and long->short cascade distillation.  Evaluation reports 16/32/64 bits.
"""

from configs import cifar_prefix


def get_config():
  config = cifar_prefix.get_config()
  config.model.bit_list = (16, 32, 64)
  config.loss.dominance_weights = True
  config.loss.distill_weight = 1.0
  return config

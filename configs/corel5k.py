"""Corel-5k (../shared/data/corel5k.tar.xz): 4,999 photos with multi-label annotations, in the
HashNet list format of NUS-WIDE and MS-COCO (the 21 most frequent words); 443 test queries,
3,947 database images that are also the training images, 400 of them validation queries
(out of training).  A database image is relevant to a query when they share a word; mAP@1000
with its depth profile.  Heads on cached features of a frozen ImageNet EfficientNet-Lite2
(``common.frozen_heads``), the CIFAR-10 recipe otherwise.

  python main.py --config=configs/corel5k.py --workdir=runs/corel5k
"""

from configs import base, common


def get_config():
  config = common.list_dataset(common.frozen_heads(base.get_config(), "efficientnet_lite2"),
                               common.shared_data("corel5k.tar.xz"), val_queries=400, top_k=1000)
  config.train.learning_rate = 3e-3
  config.loss.temperature = 0.2
  return config

"""NUS-WIDE-21 (the 21 most frequent concepts) from its HashNet lists (the NSH paper's protocol:
2,100 queries, the database, 10,500 training images), multi-label, mAP@5000; heads on cached
features of a frozen ImageNet EfficientNet-Lite2 (``common.frozen_heads``), 1,000 validation
queries out of training.

  python main.py --config=configs/nus_wide.py --config.dataset.data_dir=DIR --workdir=runs/nus

DIR (a directory or archive) holds train.txt, database.txt, test.txt
(``relative/path.jpg 0 1 0 ...``) and the images they name (nsh_jax/image_lists.py).  Not
measured here: the data is not available offline (docs/results/corel5k.md is the multi-label
table we have).
"""

from configs import base, common


def get_config():
  config = common.list_dataset(common.frozen_heads(base.get_config(), "efficientnet_lite2"),
                               val_queries=1000, top_k=5000)
  config.train.learning_rate = 3e-3
  config.loss.temperature = 0.2
  return config

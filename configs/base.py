"""Every config key with its base value: the paper's NSH (pure SortedNCE, sign codes),
MoCo-v2 augmentation for natural images, a small CNN on the bundled digits.

Not a recipe to run as it is: ``default.py`` (the first run) and the ``cifar*``
configs start from here and say what they change.  ``AUGMENTATIONS`` are the
augmentation presets (``augmentation(config, name)``); pick one for your data
with ``--config=configs/default.py:natural`` or ``:digits``.
"""

import ml_collections

# Augmentation presets (the dataset.* keys they set).
AUGMENTATIONS = {
    # Photos (MoCo-v2, what the NSH reimplementations use): a mirrored photo is the
    # same scene, and colour says little about the class.
    "natural": dict(min_scale=0.5, flip=0.5, brightness=0.4, contrast=0.4, saturation=0.4,
                    hue=0.1, jitter_prob=0.8, gray_prob=0.2),
    # Digits, characters, symbols: mirroring changes the class (2 vs 5, b vs d) and
    # colour is absent; crops (translation and scale) are the invariance that holds.
    "digits": dict(min_scale=0.5, flip=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, jitter_prob=0.0, gray_prob=0.0),
}


def augmentation(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets ``config.dataset``'s augmentation keys from preset ``name``; returns ``config``."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(AUGMENTATIONS)}")
  for key, value in AUGMENTATIONS[name].items():
    setattr(config.dataset, key, value)
  return config


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "digits"
  config.dataset.data_dir = ""
  config.dataset.download = False
  config.dataset.image_size = 32
  # How the images split into training / queries / database (nsh_jax/protocol.py):
  # 'standard' (test = queries, train = database = training set) or 'paper' (the
  # NSH/CIBHash CIFAR-10 protocol: queries_per_class queries from test, the rest
  # of test + train as database, train_per_class training images from it).
  config.dataset.protocol = "standard"
  config.dataset.split_seed = 0  # which images go where; independent of config.seed
  config.dataset.queries_per_class = 100
  config.dataset.train_per_class = 500
  # Validation queries per class (model selection), from the database outside the
  # training images (or out of training where every database image trains), evaluated
  # against the database without them; -1: a tenth of those images, at most 20 per class;
  # 0: none.
  config.dataset.val_queries_per_class = -1
  # Multi-label data (no classes to balance): this many validation queries, drawn
  # uniformly; -1: a tenth, at most 500; 0: none.
  config.dataset.val_queries = -1
  # Shuffle the database rows (split seed): Hamming ties are broken by row order,
  # and a class-sorted database would bias mAP.
  config.dataset.shuffle_database = True
  # cifar10 without a prepared TFDS copy: this image folder/archive instead.
  config.dataset.offline_copy = ""
  config.dataset.normalization = "imagenet"
  # Augmentation (nsh_jax/augment.py): random resized crop of area [min_scale, 1],
  # horizontal flip, colour jitter, grayscale; set from a preset of AUGMENTATIONS.
  augmentation(config, "natural")

  config.model = ml_collections.ConfigDict()
  # What the trainable encoder reads (nsh_jax/encoder_input.py): 'images' (the backbone
  # runs in every step) or 'features' (a frozen pretrained backbone's cached features).
  config.model.input = "images"
  config.model.backbone = "small_cnn"
  config.model.pretrained = False
  config.model.frozen = False
  # With a pretrained backbone that is not frozen: -1 trains all of it; K > 0 its last K
  # blocks and head only (EfficientNet-Lite), the trunk below frozen.
  config.model.train_blocks = -1
  # Code lengths; several = one head emitting prefixes (NHL), e.g. (16, 32, 64).
  config.model.bit_list = (64,)
  config.model.latent_dim = 128
  # Hidden width of the hash and latent heads (0: each head is one linear layer).
  config.model.head_hidden = 0
  config.model.bf16 = False

  # Frozen-backbone feature cache (nsh_jax/feature_cache.py), for model.input='features':
  # K >= 2 augmented views per training image are extracted once and the heads train on
  # them (needs model.frozen and model.pretrained).
  config.features = ml_collections.ConfigDict()
  config.features.views = 0
  config.features.seed = -1  # -1: config.seed (each training seed its own views)
  config.features.chunk = 256
  config.features.cache_dir = ""  # "" = $NSH_JAX_CACHE or ~/.cache/nsh-jax/features

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "nsh"
  config.loss.num_positives = 2
  config.loss.temperature = 0.3
  # SoftSort temperature (objectives.sort_temperature): in Hamming bits by default.
  config.loss.sort_temperature = 1.0
  # 'bit': sort_temperature in Hamming bits (the paper); 'length': a fraction of the
  # code length, the same softness at every length.
  config.loss.sort_temperature_unit = "bit"
  config.loss.sort_temperature_start = 0.0  # 0: no annealing
  config.loss.sort_anneal_steps = 0
  config.loss.sorter = "softsort"
  # Sort by sign codes (straight-through) instead of relaxed tanh codes.
  config.loss.straight_through = True
  # NT-Xent between the two views' latents, added to SortedNCE (0: pure NSH).
  config.loss.instance_weight = 0.0
  # NT-Xent between the two views' straight-through sign codes (0: pure NSH).
  config.loss.code_instance_weight = 0.0
  # Weight of SortedNCE (0 leaves only the instance terms: the no-sort control).
  config.loss.sorted_weight = 1.0
  # SortedNCE weight ramps linearly from 0 to 1 over these steps (0: always 1).
  config.loss.sorted_warmup_steps = 0
  config.loss.quant_weight = 0.1
  # Bit balance mean_k(mean_i b_ik)^2: keeps codes from collapsing from scratch.
  config.loss.balance_weight = 1.0
  # The Table 1 baselines' own terms (objectives.py): CIBHash's KL weight, GreedyHash's
  # cubic penalty weight, BiHalf's gamma -- their authors' defaults.
  config.loss.kl_weight = 0.001
  config.loss.cubic_weight = 0.1
  config.loss.bihalf_gamma = 6.0
  config.loss.distill_weight = 0.0  # NHL cascade distillation (nested runs)
  config.loss.dominance_weights = False  # NHL dominance-aware weights (nested runs)

  config.train = ml_collections.ConfigDict()
  # The training length, one of the two > 0 and the other 0: a number of steps, or of passes
  # over the training images (steps = ceil(epochs * n / batch): a recipe that holds across
  # dataset sizes).
  config.train.steps = 300
  config.train.epochs = 0.0
  config.train.batch_size = 64
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  # The learning rate of a trained backbone, as a multiple of train.learning_rate.
  config.train.backbone_lr = 1.0
  config.train.final_lr_fraction = 0.05
  config.train.weight_decay = 1e-4
  config.train.grad_clip = 1.0
  config.train.warmup_steps = 30
  config.train.log_every = 25
  config.train.eval_every = 0  # 0: evaluate at the end only
  config.train.checkpoint_every = 50
  config.train.keep_checkpoints = 3
  config.train.on_nonfinite = "stop"  # or "skip"
  # NSH only: log what SortedNCE's soft top-m mines (label precision; labels never
  # reach the loss) and the hash head's gradient from it vs the rest (nsh_jax/diagnostics.py).
  config.train.diagnostics = False

  config.eval = ml_collections.ConfigDict()
  config.eval.top_k = 1000  # 0 = the whole database (mAP@all)
  # Also report mAP at these depths (0 = the whole database), e.g. (100, 1000, 5000, 0).
  config.eval.depths = ()
  # ITQ / LSH on raw pixels (and on frozen features) beside the model, and the plots:
  # what a user reads; a table that computes its own baselines turns them off.
  config.eval.baselines = True
  config.eval.plots = True
  # The ceiling rows: the cosine ranking of the continuous frozen features and of the hash
  # layer (what codes made from them can reach), every depth, test and validation queries.
  config.eval.ceiling = True
  # The memorisation check: mAP with training images as queries beside the validation
  # queries' (where the training images are database rows, as in the paper protocol).
  config.eval.memorisation = True
  # Asymmetric re-ranking reported beside the Hamming ranking: each query's Hamming top-R
  # re-ordered by its real-valued code against the database bits (0: off).
  config.eval.rerank = 1000
  config.eval.quantizers = ("sign", "itq", "h2q")  # compared by --mode=quantize

  config.quantizer = "sign"
  return config

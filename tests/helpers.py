import os
import subprocess
import sys

import numpy as np

from conftest import ROOT


def read_only_compile_cache(env: dict) -> dict:
  """``env`` whose runs read the suite's compilation cache (if any) but never write to it:
  for a run that a test SIGKILLs, so that no kill lands in a cache write."""
  return dict(env, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1e9")


def run_main(args, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  env.update(env_extra or {})
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py")] + args, cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


# No per-run pixel baselines or plots (~11 s of a ~27 s run): the tests of those turn them
# back on with EVAL_EXTRAS.
TINY = ["--config=configs/default.py", "--config.train.epochs=0", "--config.train.steps=4",
        "--config.train.batch_size=16",
        "--config.train.log_every=2", "--config.train.checkpoint_every=2",
        "--config.model.bit_list=(16,)", "--config.model.latent_dim=16", "--config.eval.top_k=100",
        "--config.eval.baselines=False", "--config.eval.plots=False"]
EVAL_EXTRAS = ["--config.eval.baselines=True", "--config.eval.plots=True"]


def checkpoint_params(workdir, step):
  """``{path: array}`` of the params in checkpoint ``step`` of ``workdir``, as NumPy
  arrays whatever device layout wrote it."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "default"))
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  tree = ckptr.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
  return {"/".join(str(k) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def tiny_config(steps: int = 4):
  """The config of ``TINY + --config.train.steps=steps``, for in-process calls of a mode."""
  from configs import default
  c = default.get_config()
  c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 16, 2, 2
  c.model.bit_list, c.model.latent_dim, c.eval.top_k, c.train.steps = (16,), 16, 100, steps
  c.train.epochs = 0.0
  c.eval.baselines = c.eval.plots = False
  return c


def dataset_config(name: str, image_size: int, **dataset):
  """configs/base.py with ``dataset.name = name``, that image size and these dataset keys."""
  from configs import base
  c = base.get_config()
  c.dataset.name, c.dataset.image_size = name, image_size
  for k, v in dataset.items():
    c.dataset[k] = v
  return c

"""The experiments behind the NSH recipe in configs/cifar_prefix.py (docs/training.md).

Each variant trains a single 64-bit head from scratch on the shared CIFAR-10
prefix (small CNN, batch 128, 300 steps, seed 0) and reports mAP@1000 of the
sign codes at 16/32/64 bits (prefixes of the one head) and of ITQ on the
L2-normalised latents (does the backbone learn, whatever the codes do?).

  python benchmarks/recipe_search.py [--variants contrastive nsh_pure ...] [--steps 300]

Results are appended as JSON lines to --out (default runs/recipe_search.jsonl).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import cifar_prefix
from nsh_jax import householder, input_pipeline, metrics, evaluation, state as state_lib, step as step_lib
from nsh_jax import xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point

# The recipe's three settings, switched off: plain SortedNCE.
PURE = {"instance_weight": 0.0, "code_instance_weight": 0.0, "sorted_warmup_steps": 0}
VARIANTS = {
    "contrastive": {"name": "contrastive"},
    "nsh_pure": dict(PURE),
    "nsh_pure_m1": dict(PURE, num_positives=1),
    "nsh_latent_inst": dict(PURE, instance_weight=1.0),
    "nsh_code_inst": dict(PURE, code_instance_weight=1.0),
    "nsh_both_inst": dict(PURE, instance_weight=1.0, code_instance_weight=1.0),
    "nsh_both_inst_m1": dict(PURE, instance_weight=1.0, code_instance_weight=1.0,
                             num_positives=1),
    "nsh_both_inst_m4": dict(PURE, instance_weight=1.0, code_instance_weight=1.0,
                             num_positives=4),
    "nsh_recipe": {},  # configs/cifar_prefix.py as it is: both terms + SortedNCE ramp
}


def run(name, overrides, steps, seed):
  c = cifar_prefix.get_config()
  c.model.bit_list, c.train.steps, c.seed = (64,), steps, seed
  c.train.warmup_steps = 100  # the search ran before the config's warm-up became 30
  for k, v in overrides.items():
    c.loss[k] = v
  splits = input_pipeline.load(c)
  mesh = state_lib.make_mesh()
  data = NamedSharding(mesh, P("data"))
  state = jax.device_put(state_lib.create_train_state(c, jax.random.PRNGKey(seed), (32, 32, 3)),
                         NamedSharding(mesh, P()))
  step_fn = step_lib.make_train_step(c, mesh)
  t0 = time.time()
  for _, x, y in input_pipeline.train_batches(splits.train_images, splits.train_labels,
                                              c.train.batch_size, seed, 0, steps):
    state, m = step_fn(state, jax.device_put(x, data), jax.device_put(y, data))
  jax.block_until_ready(m)
  train_s = time.time() - t0

  def encode(images):
    return np.concatenate([evaluation.encode_images(evaluation.make_encode_fn(c, mesh, out), state,
                                               images, mesh) for out in ("logits", "latents")], 1)

  q, d = encode(splits.query_images), encode(splits.db_images)
  res = {"variant": name, "steps": steps, "seed": seed, "train_s": round(train_s)}
  for b in (16, 32, 64):
    res[f"sign{b}"] = round(float(metrics.mean_average_precision(
        q[:, :b], d[:, :b], splits.query_labels, splits.db_labels, 1000)), 4)
  itq = householder.fit("itq", d[:, 64:], bits=64, seed=0)
  res["latent_itq64"] = round(float(metrics.mean_average_precision(
      householder.apply(itq, q[:, 64:]), householder.apply(itq, d[:, 64:]),
      splits.query_labels, splits.db_labels, 1000)), 4)
  return res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="runs/recipe_search.jsonl")
  args = ap.parse_args()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  for name in args.variants:
    res = run(name, VARIANTS[name], args.steps, args.seed)
    print(json.dumps(res), flush=True)
    with open(args.out, "a") as f:
      f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
  main()

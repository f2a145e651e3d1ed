"""NHL: one nested run (16/32/64 bits from one head) vs one separate run per length.

Same data (the shared CIFAR-10 prefix: 1,017 queries, 5,085 database = training
images), same encoder, same steps per run, same seed; mAP@1000 per length and
training time of each run, printed as a Markdown table.

  python benchmarks/nested.py --base csq --steps 300 [--workdir runs/nested_bench]

``--base`` is the per-length loss: ``csq`` (supervised hash centres, NHL's
setting) or ``nsh`` (SortedNCE: nested NSH).  The nested run uses dominance-aware
weights and cascade distillation (``--distill``).  Runs go through ``benchmarks/runs.py``
(reused only at the same clean commit).
"""

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import runs  # noqa: E402


def run(workdir, name, overrides, version):
  res, _ = runs.run(workdir, name, ["--config=configs/cifar_prefix.py"] + overrides, version)
  return {int(b): r["map"] for b, r in res["by_bits"].items()}, res["train_seconds"]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--base", default="csq", choices=("csq", "nsh", "dpsh", "dsh"))
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
  ap.add_argument("--distill", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--workdir", default="runs/nested_bench")
  args = ap.parse_args()
  os.chdir(runs.ROOT)
  version = runs.code_version()
  common = [f"--config.loss.name={args.base}", f"--config.train.steps={args.steps}",
            f"--config.train.batch_size={args.batch}", f"--config.seed={args.seed}",
            f"--config.train.checkpoint_every={args.steps}"]
  if args.base != "nsh":  # supervised bases: no bit-balance / quantization extras
    common += ["--config.loss.balance_weight=0", "--config.loss.quant_weight=0"]
  tag = f"{args.base}_s{args.steps}_b{args.batch}_seed{args.seed}"
  separate, sep_wall = {}, 0.0
  for b in args.bits:
    maps, wall = run(args.workdir, f"{tag}_separate_{b}",
                     common + [f"--config.model.bit_list=({b},)"], version)
    separate[b] = maps[b]
    sep_wall += wall
  bit_list = "(" + ",".join(str(b) for b in args.bits) + ")"
  nested, nest_wall = run(args.workdir, f"{tag}_nested_d{args.distill}",
                          common + [f"--config.model.bit_list={bit_list}",
                                    "--config.loss.dominance_weights=True",
                                    f"--config.loss.distill_weight={args.distill}"], version)
  print(f"# {platform.machine()}, {os.cpu_count()} CPU cores; base loss {args.base}, small CNN, "
        f"{args.steps} steps of batch {args.batch} per run, seed {args.seed}; "
        f"CIFAR-10 prefix, mAP@1000")
  print("| | " + " | ".join(f"{b} bits" for b in args.bits) + " | training time (s) |")
  print("|---|" + "---|" * (len(args.bits) + 1))
  print(f"| {len(args.bits)} separate runs | "
        + " | ".join(f"{separate[b]:.4f}" for b in args.bits) + f" | {sep_wall:.0f} |")
  print("| one nested run (dominance weights + distillation) | "
        + " | ".join(f"{nested[b]:.4f}" for b in args.bits) + f" | {nest_wall:.0f} |")
  print(f"\nnested / separate training time: {nest_wall / sep_wall:.2f}")


if __name__ == "__main__":
  main()

"""glibc malloc settings for main.py: speed, page faults and peak memory of real training runs.

  python benchmarks/malloc_settings.py [--rounds 2] [--large-steps 24]

Each cell is one training run (``nsh_jax.modes.train_mode``, what ``main.py`` calls) in
a fresh child process that first applies one setting:

* ``default`` -- glibc's own (``NSH_JAX_KEEP_MALLOC=1`` in main.py);
* ``heap_only`` -- the earlier ``malloc.tune()``: every block from the heap, never trimmed;
* ``tuned`` -- today's ``malloc.tune()``: blocks up to 32 MiB from the heap, larger ones
  ``mmap``-ed and returned.

Workloads: ``small`` -- the first run's config (``configs/default.py``: small CNN, batch 64)
for ``--small-steps``; ``large`` -- ``configs/cifar_prefix_pretrained.py`` (heads on cached
Lite0 features; its cache must exist: run that config once) at batch 2,048 with diagnostics,
the run whose heap once grew past 18 GiB under ``heap_only``.  Each cell is two runs, of
``S/5`` and ``S`` steps, so that start-up, compilation and evaluation cancel: steps/s and
minor page faults per step are the differences between them (``train_seconds`` of
``metrics.json``; ``getrusage`` around the run), per extra step; the peak resident set
(VmHWM) is the longer run's.  Rounds interleave the settings (machine noise is large
here: compare within a round).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("default", "heap_only", "tuned")

_CHILD = """
import json, os, resource, sys
sys.path.insert(0, {root!r})
setting = {setting!r}
if setting != "default":
  from nsh_jax import malloc
  assert malloc.tune(heap_only=setting == "heap_only")
from nsh_jax import xla_cpu
xla_cpu.apply_defaults()
import importlib
from nsh_jax import modes
cfg = importlib.import_module({module!r}).get_config()
for key, value in {overrides!r}.items():
  node = cfg
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  node[last] = value
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
modes.train_mode(cfg, {workdir!r}, {{}})
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
m = json.load(open(os.path.join({workdir!r}, "metrics.json")))
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print("RESULT", json.dumps({{"train_seconds": m["train_seconds"], "faults": faults,
                            "peak_gib": hwm / 2 ** 20}}))
"""


def one_run(setting, module, overrides, tmp):
  workdir = tempfile.mkdtemp(dir=tmp)
  code = _CHILD.format(root=ROOT, setting=setting, module=module, overrides=overrides,
                       workdir=workdir)
  env = {k: v for k, v in os.environ.items() if k != "NSH_JAX_KEEP_MALLOC"}
  env["PYTHONPATH"] = ROOT
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True)
  for line in res.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  return {"error": (res.stderr.strip().splitlines() or ["killed"])[-1][:120],
          "returncode": res.returncode}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--small-steps", type=int, default=200)
  p.add_argument("--large-steps", type=int, default=24)
  p.add_argument("--workloads", nargs="+", default=["small", "large"])
  args = p.parse_args()
  quiet = {"eval.baselines": False, "eval.plots": False, "train.log_every": 10 ** 6,
           "train.checkpoint_every": 10 ** 6}
  workloads = {
      "small": ("configs.default", dict(quiet, **{"train.steps": args.small_steps})),
      "large": ("configs.cifar_prefix_pretrained", dict(quiet, **{
          "train.steps": args.large_steps, "train.batch_size": 2048,
          "train.warmup_steps": 2, "train.diagnostics": True})),
  }
  import platform
  print(f"# x86_64={platform.machine()}, {os.cpu_count()} cores; one training run per cell")
  print("| workload | round | setting | steps/s | minor faults / step | peak RSS (GiB) |")
  print("|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.workloads:
      module, overrides = workloads[name]
      for r in range(args.rounds if name == "small" else 1):
        for setting in SETTINGS:
          steps = overrides["train.steps"]
          short, full = (one_run(setting, module, dict(overrides, **{"train.steps": n}), tmp)
                         for n in (max(2, steps // 5), steps))
          if "error" in full or "error" in short:
            bad = full if "error" in full else short
            print(f"| {name} | {r} | {setting} | failed (rc {bad['returncode']}): "
                  f"{bad['error']} | | |", flush=True)
            continue
          extra = steps - max(2, steps // 5)
          rate = extra / (full["train_seconds"] - short["train_seconds"])
          faults = (full["faults"] - short["faults"]) / extra
          print(f"| {name} | {r} | {setting} | {rate:.2f} | {faults:.0f} | "
                f"{full['peak_gib']:.2f} |", flush=True)

if __name__ == "__main__":
  main()

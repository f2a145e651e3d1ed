"""The one way benchmarks run main.py: flags in, ``metrics.json`` out, a finished run reused.

A run lives in ``WORKDIR/<name>-<digest>``, the digest covering its flags and the code's
commit; it is reused only when its ``metrics.json`` records that commit from a clean
checkout (and every extra mode asked for has written its file) -- never a run of other code
or another config.  So a table that stops (or runs in parts) resumes where it stopped at
the same commit.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# What each extra mode writes in the work dir.
MODE_FILES = {"quantize": "quantize.json"}


def code_version() -> dict:
  """The checkout's commit; exits unless the checkout is clean (every row records it)."""
  from nsh_jax.files import code_version as version
  v = version()
  if not v["commit"] or v["dirty"]:
    sys.exit("run from a clean git checkout: every row must record the commit it measured")
  return v


def flags(overrides: dict) -> list:
  """``{'train.steps': 500}`` -> ``['--config.train.steps=500']`` (sorted)."""
  return [f"--config.{k}={v}" for k, v in sorted(overrides.items())]


def run(workdir: str, name: str, args: list, version: dict, modes=(), log=True):
  """``(metrics.json, {mode: its json})`` of ``main.py`` with ``args`` (then each of
  ``modes``, e.g. ``'quantize'``), run now or reused (see the module docstring)."""
  digest = hashlib.sha256(json.dumps([args, version["commit"]]).encode()).hexdigest()[:12]
  wd = os.path.join(workdir, f"{name}-{digest}")
  path = os.path.join(wd, "metrics.json")
  extra = {m: os.path.join(wd, MODE_FILES[m]) for m in modes}
  done = os.path.exists(path) and all(os.path.exists(p) for p in extra.values())
  if done:
    m = json.load(open(path))
    cv = m.get("code_version", {})
    done = cv.get("commit") == version["commit"] and not cv.get("dirty")
  if not done:
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={wd}"] + list(args)
    t = time.time()
    for mode in ("train",) + tuple(modes):
      res = subprocess.run(cmd + [f"--mode={mode}"], cwd=ROOT, capture_output=True, text=True)
      if res.returncode:
        sys.exit(f"{name} {args} --mode={mode} failed:\n{res.stderr[-3000:]}")
    if log:
      print(f"  {name} {' '.join(args)}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
  return json.load(open(path)), {m: json.load(open(p)) for m, p in extra.items()}


def write_report(text: str, out) -> None:
  """Writes a benchmark's markdown report to ``out`` (``--out``), when one is given."""
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")


def override(config, overrides: dict):
  """``config`` with ``overrides`` (``{'a.b': value}``, as ``--config.a.b=value``) set in place."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def load_config(path: str):
  """The config of ``configs/x.py`` (or ``configs/x.py:variant``), as ``main.py --config=``
  reads it."""
  import importlib.util
  path, _, variant = path.partition(":")
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant) if variant else mod.get_config()

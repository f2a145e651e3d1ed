"""nsh_jax.malloc: after tune(), a step's freed blocks are reused without page faults, and
blocks above 32 MiB still go back to the kernel, so freed large blocks cannot pin the heap."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20

# Runs one scenario in a child (the settings are process-wide) after ``setting``:
# 'default' (glibc's), 'tuned' (malloc.tune()), 'heap_only' (malloc.tune(heap_only=True)).
_PROBE = """
import ctypes, json, resource, sys, threading
sys.path.insert(0, {root!r})
tuned = None
if {setting!r} != "default":
  from nsh_jax import malloc
  tuned = malloc.tune(heap_only={setting!r} == "heap_only")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MIB = 1 << 20

def rss(field="VmRSS"):
  for line in open("/proc/self/status"):
    if line.startswith(field):
      return int(line.split()[1]) * 1024

def touch(size):
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  return p

out = {{"tuned": tuned}}

def steps(name):
  # A step's buffers: ten 8 MiB blocks, all freed at its end; six steps, the
  # minor page faults of the last four counted.
  for i in range(6):
    if i == 2:
      start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [touch(8 * MIB) for _ in range(10)]
    for p in blocks:
      libc.free(p)
  out[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

if {scenario!r} == "steps":
  steps("main")
  t = threading.Thread(target=steps, args=("thread",))
  t.start(); t.join()
else:  # a large block freed under a small one that stays: is it given back?
  base = rss()
  big = touch(96 * MIB)
  touch(MIB)
  libc.free(big)
  out["kept"] = rss() - base
print(json.dumps(out))
"""


def _probe(setting: str, scenario: str, env_extra=None) -> dict:
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc malloc settings: Linux only")
  env = {k: v for k, v in os.environ.items() if k != "NSH_JAX_KEEP_MALLOC"}
  env.update(env_extra or {})
  code = _PROBE.format(root=ROOT, setting=setting, scenario=scenario)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_tune_stops_page_faults_of_a_steps_reused_blocks():
  pages = 4 * 80 * MIB // 4096  # four steps of 80 MiB, were every page fresh
  before, after = _probe("default", "steps"), _probe("tuned", "steps")
  assert after["tuned"] is True
  assert after["main"] < 0.02 * pages and after["thread"] < 0.02 * pages, after
  # The control: glibc's defaults give the freed step back to the kernel (trim) and
  # fault it in again every step (a thread's own arena trims less of it).
  assert before["main"] > 0.9 * pages and before["thread"] > 0.1 * pages, before


def test_blocks_above_32_mib_still_go_back_to_the_kernel():
  """What bounds the heap: a freed 96 MiB block is returned even with a live block above
  it.  The all-heap setting keeps such holes resident, so a heap grown at a large batch
  never shrinks."""
  tuned, default, heap = (_probe(s, "returned")["kept"] for s in ("tuned", "default",
                                                                  "heap_only"))
  assert tuned < 8 * MIB and default < 8 * MIB, (tuned, default)
  assert heap > 90 * MIB, heap  # the test can fail: the all-heap setting keeps it


def test_opt_out_leaves_malloc_alone():
  out = _probe("tuned", "steps", env_extra={"NSH_JAX_KEEP_MALLOC": "1"})
  assert out["tuned"] is False
  assert out["main"] > 0.9 * 4 * 80 * MIB // 4096, out

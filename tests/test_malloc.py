"""nsh_jax.malloc: after tune(), large blocks freed and allocated again fault no new pages."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 96 << 20  # above glibc's largest mmap threshold and a thread arena's 64 MiB heap
PAGES = BLOCK // 4096

# Allocates, fills and frees a BLOCK six times, in the main thread and in a
# thread started afterwards (as XLA's are), and counts the minor page faults of
# the last four rounds.  Runs in a child: the settings are process-wide.
_PROBE = """
import ctypes, json, os, resource, sys, threading
sys.path.insert(0, {root!r})
tuned = None
if {tune}:
  from nsh_jax import malloc
  tuned = malloc.tune()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = {{}}

def rounds(name):
  for i in range(6):
    if i == 2:
      start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc({block})
    ctypes.memset(p, 1, {block})
    libc.free(p)
  faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

rounds("main")
t = threading.Thread(target=rounds, args=("thread",))
t.start(); t.join()
print(json.dumps({{"tuned": tuned, **faults}}))
"""


def _probe(tune: bool, env_extra=None) -> dict:
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc malloc settings: Linux only")
  env = {k: v for k, v in os.environ.items() if k != "NSH_JAX_KEEP_MALLOC"}
  env.update(env_extra or {})
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT, tune=tune, block=BLOCK)],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_tune_stops_page_faults_of_reused_large_blocks():
  before = _probe(tune=False)
  after = _probe(tune=True)
  assert after["tuned"] is True
  # 4 rounds x PAGES pages would fault without reuse; allow a little noise.
  assert after["main"] < 0.02 * 4 * PAGES, after
  assert after["thread"] < 0.02 * 4 * PAGES, after
  # The control: glibc's defaults map and zero fresh pages every round.
  assert before["main"] > 0.9 * 4 * PAGES, before
  assert before["thread"] > 0.9 * 4 * PAGES, before


def test_opt_out_leaves_malloc_alone():
  out = _probe(tune=True, env_extra={"NSH_JAX_KEEP_MALLOC": "1"})
  assert out["tuned"] is False
  assert out["main"] > 0.9 * 4 * PAGES, out

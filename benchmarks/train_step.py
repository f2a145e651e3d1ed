"""[Retired goal: the >= 3x target is abandoned; kept as a measurement, BENCHMARKS.md.]

NSH training step: nsh_jax's jitted step vs the PyTorch way, same run, same sizes.

Both sides: the small CNN of ``nsh_jax.models.SmallCNN`` (same layers, same
widths), a tanh hash head (64 bits) and an L2-normalised latent head (128),
two views per image, symmetric SortedNCE (m=2, T=0.3, SoftSort at one Hamming
bit, straight-through sign codes in the sorter), the quantization and
bit-balance penalties, global-norm clipping and AdamW.

* ours: ``nsh_jax.step.make_train_step`` -- augmentation of both views inside
  the jitted step, the exact O(n^2 log n) SortedNCE, donated state;
* PyTorch: eager ``torch.nn`` (CPU torch; ``pip install torch==2.13.0``),
  SortedNCE as the public reimplementations compute it (materialised soft
  permutation [n, n, n] and gathered latents [n, n, d]).  Its two views are
  handed over pre-made: its augmentation cost is *not* counted (ours is).

  python benchmarks/train_step.py [--batches 64 256 1024] [--steps 5]
                                  [--compare-xla-defaults] [--malloc default|tuned|both]

Prints steps/s of both, their ratio, our compile time separately, and the
median minor page faults per step of each side (``getrusage``).  A second
table splits each step into the CNN alone (forward + backward of the encoder
on the ``2 x batch`` pre-made views, gradients of ``sum(codes) + sum(latents)``
w.r.t. the parameters only, as in the step) and the rest (step minus CNN:
SortedNCE, penalties, optimizer; and for ours the augmentation), timed in the
same interleaved rounds, and the ratio the whole step could reach if our CNN
were only as fast as PyTorch's and everything else cost nothing
(PyTorch step / PyTorch CNN).  A third table holds the 3x target against the
convolutions: the budget (PyTorch step / 3); what the nine 3x3 convolution
passes cost on each side timed alone (ours by :mod:`benchmarks.conv_layers`);
what they would cost at the best float32 matmul rate measured on this machine
(XLA's or torch's) for their useful FLOPs; each side's other CNN layers (CNN
alone minus convs); and what 3x would leave for ours.  Both
sides use every core (torch.set_num_threads(os.cpu_count())).  Our side runs
with the XLA:CPU flags ``xla_cpu.apply_defaults()`` sets (:mod:`nsh_jax.xla_cpu`);
``--compare-xla-defaults`` adds a column for our step under XLA's own
defaults (a subprocess with ``NSH_JAX_KEEP_XLA_FLAGS=1``, since XLA reads its
flags once per process).

``--malloc`` picks the C allocator settings, which both sides share (one
process): ``default`` (glibc's), ``tuned`` (:func:`nsh_jax.malloc.tune`, what
``main.py`` sets, applied before anything else starts) or ``both``
(``default`` in this process, then the same table from a child process with
``tuned``).
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# mallopt must run before JAX or torch start threads, so before the imports below.
_early = argparse.ArgumentParser(add_help=False)
_early.add_argument("--malloc", choices=("default", "tuned", "both"), default="default",
                    help="C allocator settings shared by both sides (see the docstring)")
MALLOC = _early.parse_known_args()[0].malloc
if MALLOC == "tuned":
  from nsh_jax import malloc
  if not malloc.tune():
    sys.exit("--malloc tuned: could not apply the settings (not glibc, or NSH_JAX_KEEP_MALLOC set)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import conv_layers  # noqa: E402
from configs import base  # noqa: E402
from nsh_jax import models, state as state_lib, step as step_lib, xla_cpu  # noqa: E402

xla_cpu.apply_defaults()  # as main.py does: this script is an entry point

BITS, LATENT, M, TEMP = 64, 128, 2, 0.3


def cpu_model():
  """The CPU's model name and whether it has AVX2 / AVX-512 (from /proc/cpuinfo)."""
  try:
    info = open("/proc/cpuinfo").read()
  except OSError:
    return platform.processor() or "unknown CPU"
  name = next((l.split(":", 1)[1].strip() for l in info.splitlines()
               if l.startswith("model name")), "unknown CPU")
  flags = next((l.split(":", 1)[1].split() for l in info.splitlines()
                if l.startswith("flags")), [])
  simd = [f for f in ("avx2", "avx512f") if f in flags]
  return f"{name} ({', '.join(simd) or 'no AVX2'})"


def config_for(batch):
  c = base.get_config()
  c.model.bit_list, c.model.latent_dim, c.train.batch_size = (BITS,), LATENT, batch
  c.loss.num_positives, c.loss.temperature = M, TEMP
  return c


def _timed(step_once, steps):
  """Per-step (wall seconds, minor page faults of the whole process) of ``steps`` calls."""
  out = []
  for _ in range(steps):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    step_once()
    out.append((time.perf_counter() - t,
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
  return out


def jax_runner(batch, images, labels):
  """(run, compile_s): ``run(steps)`` times our jitted step, one sync per step."""
  c = config_for(batch)
  mesh = state_lib.make_mesh()
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  box = [jax.device_put(state_lib.create_train_state(c, jax.random.PRNGKey(0), (32, 32, 3)),
                        repl)]
  step = step_lib.make_train_step(c, mesh)
  x, y = jax.device_put(images, data), jax.device_put(labels, data)
  t = time.perf_counter()
  compiled = step.lower(box[0], x, y).compile()
  compile_s = time.perf_counter() - t

  def once():
    box[0], m = compiled(box[0], x, y)
    jax.block_until_ready(m)

  once()  # warm-up
  return (lambda steps: _timed(once, steps)), compile_s


def jax_cnn_runner(batch):
  """``run(steps)`` timing our encoder's forward + backward alone on ``2 x batch`` images."""
  c = config_for(batch)
  state = state_lib.create_train_state(c, jax.random.PRNGKey(0), (32, 32, 3))
  views = jax.random.normal(jax.random.PRNGKey(1), (2 * batch, 32, 32, 3))

  def loss(params, x):
    out = state.apply_fn({"params": params}, x)
    return jnp.sum(out["codes"]) + jnp.sum(out["latents"])

  grad = jax.jit(jax.grad(loss)).lower(state.params, views).compile()
  once = lambda: jax.block_until_ready(grad(state.params, views))
  once()  # warm-up
  return lambda steps: _timed(once, steps)


def sgemm_gflops(torch, repeats=5, n=2048):
  """{library: GFLOP/s} of an ``n x n`` float32 matmul (fastest of ``repeats``), by
  XLA and by torch on all cores: the machine's reachable dense rate."""
  rng = np.random.default_rng(2)
  a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  runs = {"XLA": lambda: jax.block_until_ready(mm(ja, jb)), "torch": lambda: torch.mm(ta, tb)}
  rates = {}
  for name, once in runs.items():
    once()
    rates[name] = 2 * n ** 3 / 1e9 / min(t for t, _ in _timed(once, repeats))
  return rates


def bench_jax_xla_defaults(batch, steps, rounds):
  """Our step in a fresh process with XLA's default CPU flags: (steps/s, compile s)."""
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--jax-only",
                        "--batches", str(batch), "--steps", str(steps),
                        "--rounds", str(rounds), "--malloc", MALLOC],
                       env=xla_cpu.defaults_env(), capture_output=True, text=True, check=True)
  rate, compile_s = out.stdout.split()[-2:]
  return float(rate), float(compile_s)


def torch_side():
  import torch
  from torch import nn
  import torch.nn.functional as F

  class SmallCNN(nn.Module):
    def __init__(self, stem=32, widths=(64, 128, 256), features=256):
      super().__init__()
      layers = [nn.Conv2d(3, stem, 2, 2), nn.GroupNorm(8, stem), nn.ReLU()]
      prev = stem
      for w in widths:
        layers += [nn.Conv2d(prev, w, 3, padding=1), nn.GroupNorm(8, w), nn.ReLU(),
                   nn.MaxPool2d(2)]
        prev = w
      self.body = nn.Sequential(*layers)
      self.fc = nn.Linear(prev, features)

    def forward(self, x):
      return F.relu(self.fc(self.body(x).mean(dim=(2, 3))))

  class Encoder(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = SmallCNN()
      self.hash = nn.Linear(256, BITS)
      self.latent = nn.Linear(256, LATENT)

    def forward(self, x):
      f = self.backbone(x)
      return torch.tanh(self.hash(f)), F.normalize(self.latent(f), dim=-1)

  def sorted_nce_naive(a, b, za, zb):
    d = a.shape[1]
    s = a @ b.T / (2 * d) + 0.5
    t = torch.sort(s, dim=1, descending=True).values
    p = torch.softmax(-(t[:, :, None] - s[:, None, :]).abs() * d, dim=-1)  # [n, r, j]
    e = torch.einsum("irj,jd->ird", p, zb)
    c = torch.einsum("ird,id->ir", e, za) / TEMP
    neg = torch.logsumexp(c[:, M:], dim=1, keepdim=True)
    return (torch.logaddexp(c[:, :M], neg) - c[:, :M]).mean()

  def ste(x):
    return x + (torch.where(x >= 0, 1.0, -1.0) - x).detach()

  def make(batch):
    torch.manual_seed(0)
    model = Encoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    cfg = base.get_config()

    def step(v1, v2):
      codes, lat = model(torch.cat([v1, v2]))
      c1, c2, z1, z2 = codes[:batch], codes[batch:], lat[:batch], lat[batch:]
      s1, s2 = ste(c1), ste(c2)
      loss = 0.5 * (sorted_nce_naive(s1, s2, z1, z2) + sorted_nce_naive(s2, s1, z2, z1))
      quant = 0.5 * (((c1.abs() - 1) ** 2).mean() + ((c2.abs() - 1) ** 2).mean())
      bal = 0.5 * ((c1.mean(0) ** 2).mean() + (c2.mean(0) ** 2).mean())
      loss = loss + cfg.loss.quant_weight * quant + cfg.loss.balance_weight * bal
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      return float(loss.detach())

    def cnn_alone(v1, v2):  # the encoder's share of ``step``
      opt.zero_grad(set_to_none=True)
      codes, lat = model(torch.cat([v1, v2]))
      (codes.sum() + lat.sum()).backward()

    return step, cnn_alone

  return torch, make


def torch_conv_ms(batch, repeats):
  """PyTorch's counterpart of ``conv_layers.timings``: ms of each 3x3
  ``nn.Conv2d``'s forward + backward (input, kernel and bias gradients) at ``batch``."""
  import torch
  out = {}
  for i, (side, cin, cout) in enumerate(conv_layers.LAYERS):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(batch, cin, side, side, requires_grad=True)
    dy = torch.randn(batch, cout, side, side)

    def once():
      x.grad = None
      conv.zero_grad(set_to_none=True)
      conv(x).backward(dy)

    once()
    out[f"conv{i}"] = min(t for t, _ in _timed(once, repeats)) * 1e3
  return out


def torch_runner(batch, images):
  """``(run_step, run_cnn)``: ``run_*(steps)`` time the PyTorch step and its CNN
  alone on two pre-made views."""
  torch, make = torch_side()
  torch.set_num_threads(os.cpu_count())
  rng = np.random.default_rng(1)
  # Two pre-made views (flips of each other plus noise); NCHW float32.
  x = images.astype(np.float32) / 255.0
  v1 = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  v2 = torch.from_numpy(np.ascontiguousarray(
      (x[:, :, ::-1] + rng.normal(0, 0.02, x.shape)).astype(np.float32).transpose(0, 3, 1, 2)))
  step, cnn_alone = make(batch)
  step(v1, v2)  # warm-up
  cnn_alone(v1, v2)
  return (lambda steps: _timed(lambda: step(v1, v2), steps),
          lambda steps: _timed(lambda: cnn_alone(v1, v2), steps))


def print_conv_budget(split, repeats, torch):
  """The third table (see the docstring) for ``split`` rows ``(batch, ours step,
  ours CNN, theirs step, theirs CNN)``, in seconds, of batches PyTorch ran."""
  rates = sgemm_gflops(torch)
  peak = max(rates.values())
  form = "im2col" if models.use_patches() else "xla"
  print(f"\n# the 3x target against the convolutions (ms): budget = PyTorch step / 3; convs = the "
        f"nine 3x3 convolution passes (forward, input and kernel gradients of conv0..conv2 at "
        f"2 x batch) timed alone, ours by benchmarks/conv_layers.py (form {form!r}) and "
        f"PyTorch's nn.Conv2d, with our useful GFLOP/s (padding taps not counted); at the "
        f"matmul rate = those FLOPs at the best float32 2048^2 matmul rate measured here ("
        + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + " GFLOP/s); other layers = "
        "CNN alone - convs (stem, GroupNorms, ReLUs, pools, heads, layout copies); rest = our "
        "step - our CNN; left = budget - convs at the matmul rate - rest, what 3x would leave "
        "for our other layers")
  print("| batch | 3x budget | convs, nsh_jax (GFLOP/s) / PyTorch | convs at the matmul rate "
        "| other layers, nsh_jax / PyTorch | rest, nsh_jax | left for other layers |")
  print("|---|---|---|---|---|---|---|")
  for batch, s_ours, c_ours, s_theirs, c_theirs in split:
    gflop = 3 * sum(conv_layers.useful_gflop(2 * batch).values())
    ours = sum(conv_layers.timings(2 * batch, repeats, (form,)).values())
    theirs = sum(torch_conv_ms(2 * batch, repeats).values())
    floor = gflop / peak * 1e3
    budget, rest = s_theirs / 3 * 1e3, (s_ours - c_ours) * 1e3
    print(f"| {batch} | {budget:.0f} | {ours:.0f} ({gflop / ours * 1e3:.0f}) / {theirs:.0f} "
          f"| {floor:.0f} | {c_ours * 1e3 - ours:.0f} / {c_theirs * 1e3 - theirs:.0f} "
          f"| {rest:.0f} | {budget - floor - rest:.0f} |", flush=True)


def main():
  ap = argparse.ArgumentParser(parents=[_early])  # --malloc, read before the imports
  ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
  ap.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  ap.add_argument("--rounds", type=int, default=3,
                  help="rounds, each timing both sides in turn (interleaved)")
  ap.add_argument("--torch-max-gb", type=float, default=16.0,
                  help="skip PyTorch where its soft permutations would exceed this")
  ap.add_argument("--compare-xla-defaults", action="store_true",
                  help="also time our step under XLA:CPU's default flags")
  ap.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  rng = np.random.default_rng(0)

  def inputs(batch):
    return (rng.integers(0, 256, (batch, 32, 32, 3)).astype(np.uint8),
            rng.integers(0, 10, batch).astype(np.int32))

  if args.jax_only:  # the --compare-xla-defaults subprocess
    run, compile_s = jax_runner(args.batches[0], *inputs(args.batches[0]))
    print(1 / min(t for _ in range(args.rounds) for t, _ in run(args.steps)), compile_s)
    return
  import torch
  extra = args.compare_xla_defaults
  allocator = ("glibc malloc tuned by nsh_jax.malloc.tune() (both sides)" if MALLOC == "tuned"
               else "glibc malloc defaults (both sides)")
  print(f"# {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__}; small CNN, 32x32, "
        f"{BITS} bits, latent {LATENT}; steps/s = 1 / fastest step of {args.rounds} "
        f"interleaved rounds x {args.steps} steps per side, after one warm-up; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {allocator}")
  print("| batch | nsh_jax steps/s | PyTorch steps/s | ratio | nsh_jax compile (s) "
        "| minor page faults per step, nsh_jax / PyTorch |"
        + (" nsh_jax, XLA:CPU defaults (steps/s) |" if extra else ""))
  print("|---|---|---|---|---|---|" + ("---|" if extra else ""))
  split = []  # (batch, ours step, ours CNN, theirs step, theirs CNN) fastest seconds
  for batch in args.batches:
    images, labels = inputs(batch)
    run_ours, compile_s = jax_runner(batch, images, labels)
    run_ours_cnn = jax_cnn_runner(batch)
    # [n, n, n] float32 soft permutations, x2 directions, kept for backward (~x4).
    torch_gb = 4 * 2 * 4 * batch ** 3 / 2 ** 30
    run_theirs, run_theirs_cnn = (torch_runner(batch, images) if torch_gb <= args.torch_max_gb
                                  else (None, None))
    ours, theirs, ours_cnn, theirs_cnn = [], [], [], []
    for _ in range(args.rounds):
      ours += run_ours(args.steps)
      if run_theirs:
        theirs += run_theirs(args.steps)
      ours_cnn += run_ours_cnn(args.steps)
      if run_theirs:
        theirs_cnn += run_theirs_cnn(args.steps)
    median_faults = lambda runs: f"{int(np.median([f for _, f in runs])):,}" if runs else "-"
    faults = f"{median_faults(ours)} / {median_faults(theirs)}"
    fastest = lambda runs: min(t for t, _ in runs) if runs else None
    split.append((batch, fastest(ours), fastest(ours_cnn), fastest(theirs), fastest(theirs_cnn)))
    ours = 1 / fastest(ours)
    tail = (f" {bench_jax_xla_defaults(batch, args.steps, args.rounds)[0]:.2f} |"
            if extra else "")
    if not run_theirs:
      print(f"| {batch} | {ours:.2f} | does not fit (~{torch_gb:.0f} GiB) | - | {compile_s:.1f} "
            f"| {faults} |" + tail, flush=True)
      continue
    theirs = 1 / fastest(theirs)
    print(f"| {batch} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}x | {compile_s:.1f} "
          f"| {faults} |" + tail, flush=True)
  print("\n# where the time goes: fastest step and fastest CNN forward + backward alone (ms), "
        "rest = step - CNN; ceiling = PyTorch step / PyTorch CNN, the ratio if our CNN only "
        "matched PyTorch's and everything else cost nothing")
  print("| batch | step, nsh_jax / PyTorch | CNN alone, nsh_jax / PyTorch "
        "| rest, nsh_jax / PyTorch | ceiling at CNN parity |")
  print("|---|---|---|---|---|")
  for batch, s_ours, c_ours, s_theirs, c_theirs in split:
    ms = lambda t: f"{t * 1e3:.0f}" if t is not None else "-"
    rest = lambda s, c: ms(s - c) if s is not None else "-"
    ceiling = f"{s_theirs / c_theirs:.2f}x" if s_theirs is not None else "-"
    print(f"| {batch} | {ms(s_ours)} / {ms(s_theirs)} | {ms(c_ours)} / {ms(c_theirs)} "
          f"| {rest(s_ours, c_ours)} / {rest(s_theirs, c_theirs)} | {ceiling} |", flush=True)
  # The 3x budget against the convolutions: what the nine 3x3 convolution passes
  # cost on each side alone and at the machine's best dense matmul rate, and what
  # that leaves the CNN's other layers.  Only for batches PyTorch ran.
  compared = [row for row in split if row[3] is not None]
  if compared:
    print_conv_budget(compared, args.rounds * args.steps, torch)
  if args.malloc == "both":  # the same table with the tuned allocator, in a fresh process
    print(flush=True)
    # argparse keeps an option's last value, so the appended one overrides "both".
    subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--malloc", "tuned"],
                   check=True)


if __name__ == "__main__":
  main()

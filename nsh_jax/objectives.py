"""Training objectives by name: the loss of one code length from the two views.

Each registered objective is ``fn(loss_config, pair, bits) -> scalar`` over a
:class:`Pair` (the encoder outputs of view 1 and view 2: dicts of ``codes``/``logits``
``[n, max_bits]``, ``latents`` ``[n, d_z]``, ``features``), using the first ``bits``
code dimensions.  :func:`length_loss` adds the code penalties::

    L_b = objective + quant_weight * mean((|c| - 1)^2) + balance_weight * mean_k(mean_i c_ik)^2

NSH (``'nsh'``)::

    ramp(step) * sorted_weight * symmetric SortedNCE(c1, c2, z1, z2)
      + instance_weight * NT-Xent(z1, z2) + code_instance_weight * NT-Xent(sgn c1, sgn c2)

(``ramp`` goes 0 -> 1 over ``sorted_warmup_steps``; the instance terms are off by
default: from scratch the codes rank candidates at random, and they give SortedNCE an anchor).

The other unsupervised methods of the NSH paper's Table 1, each as its authors'
code computes it (their docstrings say where that differs from the paper):
``'cibhash'``, ``'greedyhash'``, ``'bihalf'``.  They bring their own code terms,
so :func:`length_loss` adds no ``quant_weight`` / ``balance_weight`` penalty to them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from nsh_jax import losses
from nsh_jax.codes import bi_half, sign_ste
from nsh_jax.registry import Registry

__all__ = ["OBJECTIVES", "Pair", "length_loss", "sort_temperature", "sorted_term"]


@dataclasses.dataclass(frozen=True)
class Pair:
  """One step's two views through the encoder: what an objective reads.

  ``out1``/``out2``: encoder outputs of view 1 / view 2 (:class:`nsh_jax.models.HashEncoder`);
  ``step``: the training step (schedules); ``labels`` ``[n]`` or ``[n, C]``, ``num_classes``
  and ``seed``: for the supervised objectives only (``None`` / 0 otherwise).
  """
  out1: dict
  out2: dict
  step: Any = 0
  labels: Any = None
  num_classes: int = 0
  seed: int = 0

  @classmethod
  def of_stacked(cls, outs: dict, **kwargs) -> "Pair":
    """From the outputs of both views stacked ``[2n, ...]`` (view 1 first)."""
    n = outs["codes"].shape[0] // 2
    return cls(jax.tree.map(lambda a: a[:n], outs), jax.tree.map(lambda a: a[n:], outs),
               **kwargs)

  def codes(self, bits: int):
    return self.out1["codes"][:, :bits], self.out2["codes"][:, :bits]

  def logits(self, bits: int):
    return self.out1["logits"][:, :bits], self.out2["logits"][:, :bits]


jax.tree_util.register_dataclass(Pair, data_fields=["out1", "out2", "step", "labels"],
                                 meta_fields=["num_classes", "seed"])

OBJECTIVES = Registry("objective", "loss.name")
_OWN_CODE_TERMS = set()  # objectives that length_loss adds no code penalties to


def _own_code_terms(fn):
  _OWN_CODE_TERMS.add(fn)
  return fn


def sort_temperature(loss_cfg, step, bits: int):
  """SoftSort temperature ``tau_s`` in similarity units for ``bits``-bit codes.

  ``loss.sort_temperature`` ``T`` (annealed linearly from ``sort_temperature_start``,
  0: none, over ``sort_anneal_steps``) is read in ``loss.sort_temperature_unit``:
  ``'bit'`` -- Hamming bits, ``tau_s = T / bits`` (the paper's 1 bit); ``'length'`` --
  a fraction of the code length, ``tau_s = T`` (e.g. 1/16: 1 bit at 16 bits, 4 at 64).
  """
  end = loss_cfg.sort_temperature
  start = loss_cfg.sort_temperature_start or end
  frac = jnp.clip(step / max(int(loss_cfg.sort_anneal_steps), 1), 0.0, 1.0)
  t = start + (end - start) * frac
  return t / bits if loss_cfg.sort_temperature_unit == "bit" else t


def sorted_term(cfg, pair: Pair, bits: int):
  """``ramp(step) * sorted_weight * symmetric SortedNCE`` of the first ``bits`` code
  dimensions (0 when ``sorted_weight`` is 0: then it is not computed at all)."""
  if not cfg.sorted_weight:
    return jnp.zeros((), jnp.float32)
  c1, c2 = pair.codes(bits)
  s1, s2 = (sign_ste(c1), sign_ste(c2)) if cfg.straight_through else (c1, c2)
  term = cfg.sorted_weight * losses.symmetric_sorted_nce(
      s1, s2, pair.out1["latents"], pair.out2["latents"], num_positives=cfg.num_positives,
      temperature=cfg.temperature, sort_temperature=sort_temperature(cfg, pair.step, bits),
      sorter=cfg.sorter)
  if cfg.sorted_warmup_steps:
    # SortedNCE's positives are only as good as the codes that rank them:
    # ramp it in while the instance terms shape the codes.
    term = term * jnp.clip(pair.step / cfg.sorted_warmup_steps, 0.0, 1.0)
  return term


@OBJECTIVES.register("nsh")
def nsh(cfg, pair: Pair, bits: int):
  c1, c2 = pair.codes(bits)
  main = sorted_term(cfg, pair, bits)
  if cfg.instance_weight:
    # The other view as an explicit positive for the latents: from scratch the
    # codes rank candidates at random, so SortedNCE alone has no anchor.
    main = main + cfg.instance_weight * losses.nt_xent(pair.out1["latents"],
                                                       pair.out2["latents"], cfg.temperature)
  if cfg.code_instance_weight:
    main = main + cfg.code_instance_weight * losses.nt_xent(sign_ste(c1), sign_ste(c2),
                                                            cfg.temperature)
  return main


@OBJECTIVES.register("contrastive")
def contrastive(cfg, pair: Pair, bits: int):
  """CIBHash-style: NT-Xent on straight-through sign codes, no sorting."""
  c1, c2 = pair.codes(bits)
  return losses.nt_xent(sign_ste(c1), sign_ste(c2), cfg.temperature)


@OBJECTIVES.register("cibhash")
@_own_code_terms
def cibhash(cfg, pair: Pair, bits: int):
  """CIBHash (Qiu et al., IJCAI 2021), as its code (github.com/qiuzx2/CIBHash) computes it::

      p_v = sigmoid(logits_v),   b_v = sgn_ste(p_v - 1/2)          (v = 1, 2)
      L = NT-Xent(b_1, b_2; loss.temperature)
          + loss.kl_weight * (KL(p_1 || sg p_2) + KL(p_2 || sg p_1)) / 2

  (:func:`losses.bernoulli_kl`, ``sg`` stop-gradient).  The paper describes stochastic
  codes and a KL to a prior; the code binarises deterministically at 1/2 and its KL
  pulls each view's bit probabilities towards the other view's: we follow the code.
  Its defaults: temperature 0.3, kl_weight 0.001, a Dense(1024)-ReLU hash head.
  """
  p1, p2 = (jax.nn.sigmoid(h.astype(jnp.float32)) for h in pair.logits(bits))
  kl = 0.5 * (losses.bernoulli_kl(p1, jax.lax.stop_gradient(p2))
              + losses.bernoulli_kl(p2, jax.lax.stop_gradient(p1)))
  return losses.nt_xent(sign_ste(p1 - 0.5), sign_ste(p2 - 0.5), cfg.temperature) \
      + cfg.kl_weight * kl


def _target(out):
  """The features whose cosines the codes keep, as a constant: the authors' backbone is
  frozen, and a trained one would meet the loss by collapsing its features."""
  return jax.lax.stop_gradient(out["features"])


@OBJECTIVES.register("greedyhash")
@_own_code_terms
def greedyhash(cfg, pair: Pair, bits: int):
  """GreedyHash (Su et al., NeurIPS 2018), unsupervised, as its code
  (github.com/ssppp/GreedyHash, ``unsupervised_vgg.py``) computes it, per view::

      b = sgn_ste(h)     (h = logits: the greedy sign, identity backward)
      L_v = similarity_preservation(x, b) + loss.cubic_weight * mean(| |h| - 1 |^3)

  ``x`` the backbone features (VGG fc7 there), pairs the batch's two halves
  (:func:`losses.similarity_preservation`).  The authors train on one unaugmented view;
  here ``L = (L_1 + L_2) / 2`` over the two views the trainer draws.  Their defaults:
  cubic_weight 0.1, a linear hash head, SGD lr 1e-4 (ours: the config's optimizer).
  """
  def one(out):
    h = out["logits"][:, :bits]
    return (losses.similarity_preservation(_target(out), sign_ste(h))
            + cfg.cubic_weight * losses.cubic_penalty(h))
  return 0.5 * (one(pair.out1) + one(pair.out2))


@OBJECTIVES.register("bihalf")
@_own_code_terms
def bihalf(cfg, pair: Pair, bits: int):
  """BiHalf (Li & van Gemert, AAAI 2021), as its code (github.com/liyunqianggyn/
  Deep-Unsupervised-Image-Hashing, ``ImageHashing/Cifar10_I.py``) computes it, per view::

      b = bi_half(h; loss.bihalf_gamma)     (h = logits; :func:`codes.bi_half`)
      L_v = similarity_preservation(x, b)

  and ``L = (L_1 + L_2) / 2`` (the authors: one unaugmented view); each view's layer adds
  its full ``gamma`` term to the gradient, as the authors' layer does whatever the loss's
  scale.  A batch of one has no pair: loss and gradient 0 (theirs: NaN).  Their
  defaults: gamma 6, a linear hash head, SGD lr 1e-4.  Retrieval codes are ``sgn(h)``,
  as theirs.
  """
  def one(out):
    h = out["logits"][:, :bits]
    return losses.similarity_preservation(_target(out), bi_half(h, cfg.bihalf_gamma))
  return 0.5 * (one(pair.out1) + one(pair.out2))


@OBJECTIVES.register("dpsh")
def dpsh(cfg, pair: Pair, bits: int):
  c1, c2 = pair.codes(bits)
  return 0.5 * (losses.dpsh_loss(c1, pair.labels) + losses.dpsh_loss(c2, pair.labels))


@OBJECTIVES.register("csq")
def csq(cfg, pair: Pair, bits: int):
  """CSQ with hash centres for ``pair.num_classes`` classes at the longest length (a
  length's centres are their prefixes, as the nested head's codes)."""
  centers = losses.hadamard_centers(pair.num_classes, pair.out1["codes"].shape[1], pair.seed)
  c1, c2 = pair.codes(bits)
  return 0.5 * (losses.csq_loss(c1, pair.labels, centers[:, :bits])
                + losses.csq_loss(c2, pair.labels, centers[:, :bits]))


@OBJECTIVES.register("dsh")
def dsh(cfg, pair: Pair, bits: int):
  h1, h2 = pair.logits(bits)
  return 0.5 * (losses.dsh_loss(h1, pair.labels) + losses.dsh_loss(h2, pair.labels))


def length_loss(config, pair: Pair, bits: int):
  """``(L_b, objective)`` for code length ``bits`` (see the module docstring)."""
  cfg = config.loss
  objective = OBJECTIVES.get(cfg.name)
  main = objective(cfg, pair, bits)
  if objective in _OWN_CODE_TERMS:
    return main, main
  c1, c2 = pair.codes(bits)
  quant = 0.5 * (losses.quantization_penalty(c1) + losses.quantization_penalty(c2))
  balance = 0.5 * (losses.bit_balance_penalty(c1) + losses.bit_balance_penalty(c2))
  return main + cfg.quant_weight * quant + cfg.balance_weight * balance, main

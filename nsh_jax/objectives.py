"""Training objectives by name: the loss of one code length from the two views.

Each registered objective is ``fn(loss_config, step, out1, out2, labels, bits,
centers) -> scalar`` over the encoder outputs of view 1 and view 2 (dicts of
``codes``/``logits`` ``[n, max_bits]``, ``latents`` ``[n, d_z]``), using the
first ``bits`` code dimensions.  :func:`length_loss` adds the code penalties::

    L_b = objective + quant_weight * mean((|c| - 1)^2) + balance_weight * mean_k(mean_i c_ik)^2

NSH (``'nsh'``)::

    ramp(step) * sorted_weight * symmetric SortedNCE(c1, c2, z1, z2)
      + instance_weight * NT-Xent(z1, z2) + code_instance_weight * NT-Xent(sgn c1, sgn c2)

(``ramp`` goes 0 -> 1 over ``sorted_warmup_steps``; the instance terms are off
by default and are what NSH needs from scratch, docs/training.md).
"""

from __future__ import annotations

import jax.numpy as jnp

from nsh_jax import losses
from nsh_jax.codes import sign_ste
from nsh_jax.registry import Registry

__all__ = ["OBJECTIVES", "length_loss", "sort_temperature", "sorted_term"]

OBJECTIVES = Registry("objective", "loss.name")


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


def sorted_term(cfg, step, out1, out2, bits: int):
  """``ramp(step) * sorted_weight * symmetric SortedNCE`` of the first ``bits`` code
  dimensions (0 when ``sorted_weight`` is 0: then it is not computed at all)."""
  if not cfg.sorted_weight:
    return jnp.zeros((), jnp.float32)
  c1, c2 = out1["codes"][:, :bits], out2["codes"][:, :bits]
  s1, s2 = (sign_ste(c1), sign_ste(c2)) if cfg.straight_through else (c1, c2)
  term = cfg.sorted_weight * losses.symmetric_sorted_nce(
      s1, s2, out1["latents"], out2["latents"], num_positives=cfg.num_positives,
      temperature=cfg.temperature, sort_temperature=sort_temperature(cfg, step, bits),
      sorter=cfg.sorter)
  if cfg.sorted_warmup_steps:
    # SortedNCE's positives are only as good as the codes that rank them:
    # ramp it in while the instance terms shape the codes.
    term = term * jnp.clip(step / cfg.sorted_warmup_steps, 0.0, 1.0)
  return term


@OBJECTIVES.register("nsh")
def nsh(cfg, step, out1, out2, labels, bits, centers):
  del labels, centers
  c1, c2 = out1["codes"][:, :bits], out2["codes"][:, :bits]
  main = sorted_term(cfg, step, out1, out2, bits)
  if cfg.instance_weight:
    # The other view as an explicit positive for the latents: from scratch the
    # codes rank candidates at random, so SortedNCE alone has no anchor.
    main = main + cfg.instance_weight * losses.nt_xent(out1["latents"], out2["latents"],
                                                       cfg.temperature)
  if cfg.code_instance_weight:
    main = main + cfg.code_instance_weight * losses.nt_xent(sign_ste(c1), sign_ste(c2),
                                                            cfg.temperature)
  return main


@OBJECTIVES.register("contrastive")
def contrastive(cfg, step, out1, out2, labels, bits, centers):
  """CIBHash-style: NT-Xent on straight-through sign codes, no sorting."""
  del step, labels, centers
  return losses.nt_xent(sign_ste(out1["codes"][:, :bits]), sign_ste(out2["codes"][:, :bits]),
                        cfg.temperature)


@OBJECTIVES.register("dpsh")
def dpsh(cfg, step, out1, out2, labels, bits, centers):
  del cfg, step, centers
  return 0.5 * (losses.dpsh_loss(out1["codes"][:, :bits], labels)
                + losses.dpsh_loss(out2["codes"][:, :bits], labels))


@OBJECTIVES.register("csq")
def csq(cfg, step, out1, out2, labels, bits, centers):
  del cfg, step
  return 0.5 * (losses.csq_loss(out1["codes"][:, :bits], labels, centers[:, :bits])
                + losses.csq_loss(out2["codes"][:, :bits], labels, centers[:, :bits]))


@OBJECTIVES.register("dsh")
def dsh(cfg, step, out1, out2, labels, bits, centers):
  del cfg, step, centers
  return 0.5 * (losses.dsh_loss(out1["logits"][:, :bits], labels)
                + losses.dsh_loss(out2["logits"][:, :bits], labels))


def length_loss(config, step, out1, out2, labels, bits: int, centers=None):
  """``(L_b, objective)`` for code length ``bits`` (see the module docstring)."""
  cfg = config.loss
  main = OBJECTIVES.get(cfg.name)(cfg, step, out1, out2, labels, bits, centers)
  c1, c2 = out1["codes"][:, :bits], out2["codes"][:, :bits]
  quant = 0.5 * (losses.quantization_penalty(c1) + losses.quantization_penalty(c2))
  balance = 0.5 * (losses.bit_balance_penalty(c1) + losses.bit_balance_penalty(c2))
  return main + cfg.quant_weight * quant + cfg.balance_weight * balance, main

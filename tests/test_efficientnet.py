"""EfficientNet-Lite port: parity with the PyTorch reference, its pieces, and the weight reader."""

import io
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, SHARED_NPZ
from nsh_jax import efficientnet, errors, torch_checkpoint

REFERENCE = os.path.join(ROOT, "tests", "reference", "efficientnet_lite.npz")


def _variables(variant, top=True):
  state = torch_checkpoint.load_state_dict(efficientnet.weights_path(variant))
  var = efficientnet.convert_state_dict(state, variant)
  if not top:
    var["params"].pop("fc")
  return var


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="needs ../shared/data")
@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_logits_and_features_match_pytorch_reference(variant):
  """Same ImageNet logits and pooled features as the reference model on real images
  (outputs made by tests/reference/make_efficientnet_lite.py)."""
  from tests.reference.make_efficientnet_lite import inputs
  ref = np.load(REFERENCE)
  x = inputs(np.load(SHARED_NPZ)["test_images"][:8], efficientnet.VARIANTS[variant].native_size)
  logits = np.asarray(efficientnet.EfficientNetLite(variant, include_top=True).apply(
      _variables(variant), x))
  feats = np.asarray(efficientnet.EfficientNetLite(variant).apply(_variables(variant, False), x))
  np.testing.assert_allclose(logits, ref[f"{variant}_logits"], atol=1e-4)
  np.testing.assert_allclose(feats, ref[f"{variant}_features"], atol=1e-4)
  np.testing.assert_array_equal(logits.argmax(1), ref[f"{variant}_logits"].argmax(1))


@pytest.mark.parametrize("stride,kernel,size", [(1, 3, 9), (2, 3, 10), (2, 5, 10), (2, 5, 7)])
def test_depthwise_as_shifted_slices_equals_grouped_convolution(stride, kernel, size):
  rng = np.random.default_rng(kernel * size)
  x = jnp.asarray(rng.normal(size=(2, size, size, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 6)), jnp.float32)
  pad = efficientnet._same_pad(size, kernel, stride)
  got = efficientnet._depthwise(x, w, stride, pad)
  want = jax.lax.conv_general_dilated(x, w[:, :, None, :], (stride, stride), (pad, pad),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=6)
  np.testing.assert_allclose(np.asarray(efficientnet._depthwise(x, w, stride, pad, grouped=True)),
                             np.asarray(want), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_same_padding_is_tensorflows():
  assert efficientnet._same_pad(224, 3, 2) == (0, 1)
  assert efficientnet._same_pad(14, 5, 2) == (1, 2)
  assert efficientnet._same_pad(7, 5, 2) == (2, 2)
  assert efficientnet._same_pad(56, 5, 1) == (2, 2)


def test_block_specs_match_the_checkpoints():
  for variant, blocks in (("lite0", 16), ("lite2", 21)):  # 1+3+3+4+4+5+1 at depth 1.2
    specs = efficientnet.block_specs(variant)
    state = torch_checkpoint.load_state_dict(efficientnet.weights_path(variant))
    assert len(specs) == blocks == 1 + max(int(k.split(".")[1]) for k in state
                                          if k.startswith("_blocks."))
    for i, s in enumerate(specs):
      dw = state[f"_blocks.{i}._depthwise_conv.weight"]
      assert dw.shape == (s.inp * s.expand, 1, s.kernel, s.kernel)
      assert state[f"_blocks.{i}._project_conv.weight"].shape[:2] == (s.out, s.inp * s.expand)


def test_checkpoint_reader_refuses_foreign_and_truncated_files(tmp_path):
  bad = tmp_path / "code.pth"
  buf = io.BytesIO()
  for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
    pickle.dump(obj, buf)
  pickle.dump(os.system, buf)  # a pickle that would call a function on load
  bad.write_bytes(buf.getvalue())
  with pytest.raises(errors.DataError, match="not a plain state_dict"):
    torch_checkpoint.load_state_dict(str(bad))
  good = open(efficientnet.weights_path("lite0"), "rb").read()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(good[:len(good) // 2])
  with pytest.raises(errors.DataError, match="truncated|cannot read"):
    torch_checkpoint.load_state_dict(str(cut))
  with pytest.raises(errors.DataError, match="not found"):
    torch_checkpoint.load_state_dict(str(tmp_path / "none.pth"))


def test_hash_encoder_loads_the_pretrained_backbone():
  from configs import default
  from nsh_jax import encoder_input, state as state_lib
  c = default.get_config()
  c.model.backbone, c.model.pretrained, c.model.frozen = "efficientnet_lite0", True, True
  c.model.bit_list, c.dataset.image_size = (16,), 64
  st = state_lib.create_train_state(c, jax.random.PRNGKey(0), encoder_input.create(c))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  out = st.apply_fn({"params": st.params, "batch_stats": st.batch_stats}, x)
  want = efficientnet.EfficientNetLite("lite0").apply(_variables("lite0", False), x)
  np.testing.assert_allclose(np.asarray(out["features"]), np.asarray(want), atol=1e-5)
  assert out["codes"].shape == (2, 16)

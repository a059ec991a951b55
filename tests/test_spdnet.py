"""Our SPDNet is the official SPDNet: keys, parameter count, outputs, Haar transform, loading."""

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from utils.models.spdnet import SPDNet, SPDNetCheckpointError, haar_dwt, haar_idwt, load_spdnet_weights

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURES / "spdnet_reference_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_keys():
    return json.loads((FIXTURES / "spdnet_official_state_dict_keys.json").read_text())


def test_default_size_has_the_official_parameter_count_and_keys(official_keys):
    model = SPDNet()
    assert sum(p.numel() for p in model.parameters()) == 3_318_741
    state = model.state_dict()
    assert len(official_keys) == 930
    assert set(state) == set(official_keys)
    for key, shape in official_keys.items():
        assert list(state[key].shape) == shape, key


@pytest.mark.parametrize("case", ["even_64x64", "odd_45x38"])
def test_outputs_equal_the_official_model_in_float64(reference, case):
    model = load_spdnet_weights(SPDNet(reference["n_feats"], reference["n_resblocks"]), reference["state_dict"])
    model = model.double().eval()
    data = reference["cases"][case]
    with torch.no_grad():
        outputs = model(data["input"].double())
    for output, name in zip(outputs, ("out3", "out2", "out1")):
        expected = data[f"{name}_float64"]
        assert output.shape == expected.shape
        error = (output - expected).abs().max() / expected.abs().max()
        assert error <= 1e-6, f"{case} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("case", ["even_64x64", "odd_45x38"])
def test_outputs_equal_the_official_model_in_float32(reference, case):
    model = load_spdnet_weights(SPDNet(reference["n_feats"], reference["n_resblocks"]), reference["state_dict"]).eval()
    data = reference["cases"][case]
    with torch.no_grad():
        outputs = model(data["input"])
    for output, name in zip(outputs, ("out3", "out2", "out1")):
        expected = data[name]
        error = (output - expected).abs().max() / expected.abs().max()
        assert error <= 1e-3, f"{case} {name}: relative error {error:.2e}"


def test_haar_subbands_of_a_2x2_block():
    # [[a, b], [c, d]] -> LL (a+b+c+d)/2, LH (a+b-c-d)/2, HL (a-b+c-d)/2, HH (a-b-c+d)/2
    x = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    low, highs = haar_dwt(x)
    assert low.item() == pytest.approx(5.5)
    assert highs.flatten().tolist() == pytest.approx([-2.5, -1.5, 0.5])


def test_haar_matches_a_separable_filter_bank_with_zero_padding():
    """Filter rows, then columns, with pytorch_wavelets' reversed analysis filters and mode 'zero'."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
    h0 = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    h1 = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)

    def analyse(signal, dim):
        if signal.shape[dim] % 2:
            pad = (0, 0, 0, 1) if dim == 2 else (0, 1)
            signal = torch.nn.functional.pad(signal, pad)
        even = signal.narrow(dim, 0, signal.shape[dim] // 2 * 2)
        first, second = (even[:, :, 0::2], even[:, :, 1::2]) if dim == 2 else (even[..., 0::2], even[..., 1::2])
        return first * h0[0] + second * h0[1], first * h1[0] + second * h1[1]

    row_low, row_high = analyse(x, 3)
    ll, lh = analyse(row_low, 2)
    hl, hh = analyse(row_high, 2)
    low, highs = haar_dwt(x)
    assert low.shape == (2, 3, 4, 5)
    torch.testing.assert_close(low, ll)
    torch.testing.assert_close(highs, torch.stack((lh, hl, hh), dim=2))


@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_inverse_haar_restores_the_image_and_its_zero_padding(size):
    torch.manual_seed(1)
    x = torch.randn(1, 4, *size, dtype=torch.float64)
    restored = haar_idwt(*haar_dwt(x))
    height, width = size
    assert restored.shape[-2:] == (height + height % 2, width + width % 2)
    torch.testing.assert_close(restored[..., :height, :width], x)
    assert restored[..., height:, :].abs().max() == 0 if height % 2 else True
    assert restored[..., :, width:].abs().max() == 0 if width % 2 else True


def test_small_model_trains_on_cpu():
    torch.manual_seed(0)
    model = SPDNet(n_feats=16, n_resblocks=1)
    x = torch.rand(2, 3, 33, 40) * 255
    out3, out2, out1 = model(x)
    assert out3.shape == out2.shape == out1.shape == x.shape
    out3.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.conv_init1.conv.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = SPDNet(n_feats=8, n_resblocks=1).double()
    checkpointed = SPDNet(n_feats=8, n_resblocks=1, gradient_checkpointing=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 24, 20, dtype=torch.float64) * 255
    results = []
    for model in (plain, checkpointed):
        outputs = model(x)
        sum(o.square().mean() for o in outputs).backward()
        results.append((outputs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (outputs_a, grads_a), (outputs_b, grads_b) = results
    for a, b in zip(outputs_a, outputs_b):
        assert torch.equal(a, b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-10, atol=1e-12, msg=name)


# ---- loading


@pytest.fixture(scope="module")
def official_state(reference):
    return reference["state_dict"]


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "state_dict", "model", "spdnet"])
def test_official_checkpoint_layouts_load(official_state, tmp_path, wrap):
    state = official_state
    if wrap == "module_prefix":
        source = OrderedDict((f"module.{k}", v) for k, v in state.items())
    elif wrap == "plain":
        source = state
    else:
        source = {wrap: state, "epoch": 3}
    path = tmp_path / "weights.pt"
    torch.save(source, path)
    model = load_spdnet_weights(SPDNet(), str(path))
    assert torch.equal(model.conv_init1.conv.weight, state["conv_init1.conv.weight"])
    assert torch.equal(model.sub3.fuse12.rb.se.fc[2].weight, state["sub3.fuse12.rb.se.fc.2.weight"])


def test_our_own_state_dict_round_trips():
    torch.manual_seed(3)
    source = SPDNet(n_feats=8, n_resblocks=1)
    target = load_spdnet_weights(SPDNet(n_feats=8, n_resblocks=1), {"spdnet": source.state_dict(), "config": {"A": 1}})
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_missing_key_is_named(official_state):
    state = dict(official_state)
    del state["sub2.prior.gamma1.bias"]
    with pytest.raises(SPDNetCheckpointError, match=r"missing keys: 1 \(sub2.prior.gamma1.bias\)"):
        load_spdnet_weights(SPDNet(), state)


def test_unexpected_key_is_named(official_state):
    state = dict(official_state, **{"sub1.extra_layer.weight": torch.zeros(3)})
    with pytest.raises(SPDNetCheckpointError, match=r"unexpected keys: 1 \(sub1.extra_layer.weight\)"):
        load_spdnet_weights(SPDNet(), state)


def test_wrong_shape_is_named(official_state):
    with pytest.raises(SPDNetCheckpointError, match=r"mis-shaped keys: \d+ \(ag1.conv.bias \(32,\) vs model \(16,\)"):
        load_spdnet_weights(SPDNet(n_feats=16, n_resblocks=3), official_state)


def test_non_haar_wavelet_filter_is_refused(official_state):
    state = dict(official_state)
    state["sub2.DWT.h1_row"] = torch.tensor([0.5, 0.5]).reshape(1, 1, 1, 2)
    with pytest.raises(SPDNetCheckpointError, match=r"sub2.DWT.h1_row .* is not the Haar filter"):
        load_spdnet_weights(SPDNet(), state)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_spdnet_weights(SPDNet(), str(tmp_path / "nowhere.pt"))


def test_model_follows_dtype_and_device_moves():
    model = SPDNet(n_feats=8, n_resblocks=1).to(torch.float64)
    assert all(b.dtype == torch.float64 for b in model.buffers())

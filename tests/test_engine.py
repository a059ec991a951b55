"""The pieces of the training loop that are easy to get subtly wrong."""

import math

import pytest
import torch

from utils.training.engine import NonFiniteGuard
from utils.runtime.device import autocast, check_precision
from utils.runtime.distributed import ResumableSampler
from utils.apps.adaptation import lr_factor


def test_non_finite_micro_batch_contributes_nothing_to_the_accumulated_gradient():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    x = torch.randn(3, 4)
    reference = torch.nn.Linear(4, 1)
    reference.load_state_dict(layer.state_dict())
    reference(x).sum().backward()  # the finite micro-batch alone

    guard = NonFiniteGuard(layer.parameters())
    for poison in (False, True, False):
        loss = layer(x).sum() * (float("nan") if poison else 1.0) / 2
        guard.set_loss(loss)
        loss.backward()
    guard.remove()
    # two finite halves = one full finite gradient; the NaN micro-batch left no trace
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


def test_resumable_sampler_skips_exactly_the_consumed_indices():
    data = list(range(10))
    full = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    resumed.set_epoch(2, start=4)
    assert list(resumed) == order[4:] and len(resumed) == 6
    full.set_epoch(3)
    assert list(full) != order and sorted(full) == data  # a new shuffle every epoch
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(data, num_replicas=2, rank=rank, seed=3)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert sorted(shards[0] + shards[1]) == data


def test_learning_rate_warms_up_then_decays_by_cosine():
    factors = [lr_factor(step, warmup_steps=4, total_steps=20, min_ratio=0.1) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[20] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_precision_switch():
    with pytest.raises(ValueError, match="FP16 is refused"):
        check_precision("fp32", fp16=True)
    with pytest.raises(ValueError, match="PRECISION must be one of"):
        check_precision("fp8")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32

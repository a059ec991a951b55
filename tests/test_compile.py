"""COMPILE: torch.compile'd SPDNet against eager on the CPU, the fallbacks, and PRECISION="auto"."""

import pytest
import torch

from utils.runtime import device as runtime
from utils.models.integrated_model import IntegratedModel
from utils.runtime.device import check_compile, compile_spdnet, warm_up_compiled
from utils.models.spdnet import SPDNet

CPU = torch.device("cpu")


def spdnet_pair(checkpointing: bool) -> tuple[SPDNet, SPDNet]:
    torch.manual_seed(0)
    eager = SPDNet(n_feats=4, n_resblocks=1, gradient_checkpointing=checkpointing).train()
    compiled = SPDNet(n_feats=4, n_resblocks=1, gradient_checkpointing=checkpointing).train()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def outputs_and_gradients(spdnet: SPDNet, images: torch.Tensor, target: torch.Tensor):
    spdnet.zero_grad(set_to_none=True)
    outputs = spdnet(images)
    sum(((output / 255.0 - target) ** 2).mean() for output in outputs).backward()
    gradients = {name: parameter.grad.clone() for name, parameter in spdnet.named_parameters()
                 if parameter.grad is not None}
    return [output.detach() for output in outputs], gradients


@pytest.mark.skipif(runtime.compiler_problem(CPU) is not None, reason="no C++ compiler for inductor here")
def test_compiled_spdnet_matches_eager_outputs_and_gradients_with_checkpointing():
    """Inductor fuses and reorders float arithmetic, so equality is to float32 rounding, not bitwise:
    outputs to 1e-4 of their 0-255 range, each gradient to 1e-4 of its own largest entry."""
    eager, compiled = spdnet_pair(checkpointing=True)
    keys = list(compiled.state_dict())
    assert compile_spdnet(compiled, "default", CPU) == "default"
    assert list(compiled.state_dict()) == keys  # saved files stay those of the plain module
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=generator) * 255
    target = torch.rand(2, 3, 32, 32, generator=generator)
    expected_outputs, expected_gradients = outputs_and_gradients(eager, images, target)
    for _ in range(2):  # the compiled graph, then its cached reuse
        outputs, gradients = outputs_and_gradients(compiled, images, target)
        for output, expected in zip(outputs, expected_outputs):
            torch.testing.assert_close(output, expected, rtol=0, atol=255 * 1e-4)
        assert gradients.keys() == expected_gradients.keys() and len(gradients) > 10
        for name, gradient in gradients.items():
            scale = expected_gradients[name].abs().max().item()
            torch.testing.assert_close(gradient, expected_gradients[name], rtol=0, atol=1e-4 * scale + 1e-12, msg=name)
    assert compiled._compiled_call_impl is not None  # it really ran compiled


def test_compile_falls_back_to_eager_in_one_line_without_a_compiler(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "compiler_problem", lambda device: "no C++ compiler (g++, clang++ or $CXX) found")
    spdnet = SPDNet(n_feats=4, n_resblocks=1)
    assert compile_spdnet(spdnet, "default", CPU) == "off"
    assert capsys.readouterr().out == (
        "COMPILE='default': no C++ compiler (g++, clang++ or $CXX) found; SPDNet runs eager\n")
    assert spdnet._compiled_call_impl is None


def test_a_compiler_failure_at_warm_up_falls_back_to_eager(capsys, tiny_world):
    from utils.models.detector import load_detector

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("the compiler broke\nsecond line")

    torch._dynamo.reset()
    model = IntegratedModel(SPDNet(n_feats=4, n_resblocks=1), load_detector(tiny_world["detector_dir"])).train()
    model.spdnet.compile(backend=failing_backend)
    assert warm_up_compiled(model, "default", (1, 3, 32, 32), "fp32", CPU) is None
    line = capsys.readouterr().out
    assert line.startswith("COMPILE='default': torch.compile failed (") and "the compiler broke" in line
    assert line.count("\n") == 1 and "second line" not in line
    assert model.spdnet._compiled_call_impl is None
    assert all(parameter.grad is None for parameter in model.spdnet.parameters())
    images = torch.rand(1, 3, 32, 32)
    assert model.derain(images).shape == images.shape  # eager works


def test_compile_setting_is_checked():
    assert check_compile("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="COMPILE must be one of"):
        check_compile("auto")


def test_precision_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: (True, "CPU with AVX512-BF16 / AMX"))
    assert runtime.resolve_precision("auto", CPU) == ("bf16", "auto: CPU with AVX512-BF16 / AMX")
    monkeypatch.setattr(runtime, "native_bf16", lambda device: (False, "CPU without AVX512-BF16 / AMX"))
    assert runtime.resolve_precision("auto", CPU)[0] == "fp32"
    with runtime.autocast(CPU, "auto"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert runtime.resolve_precision("bf16", CPU) == ("bf16", "as set")
    with pytest.raises(ValueError, match="PRECISION must be one of"):
        runtime.resolve_precision("fp8", CPU)

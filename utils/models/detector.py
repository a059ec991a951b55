"""The frozen detector: loading it (any family of utils/models/detector_adapters.py), RT-DETR's r18vd
config, freezing and fingerprinting.

RT-DETR checkpoints (PekingU/rtdetr_*) predict contiguous class indices 0..num_labels-1, while COCO
annotations use category ids 1..90 with gaps: utils/runtime/coco_categories.coco_label_maps matches the two
by name (a wrong mapping silently gives mAP near 0, so every mismatch is an error there).
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

import torch
from torch import nn
from transformers import (
    AutoConfig, AutoModelForObjectDetection, PretrainedConfig, RTDetrConfig, RTDetrResNetConfig, RTDetrV2Config,
)

from utils.models.detector_adapters import ADAPTER_ATTRIBUTE, adapter_class, adapter_of, read_processor_config
from utils.runtime.coco_categories import COCO_ID2LABEL
from utils.runtime.errors import MissingFileError, SettingError

DEFAULT_DETECTOR = "PekingU/rtdetr_r18vd"
SMALL_CONFIGS = {"rt_detr": RTDetrConfig, "rt_detr_v2": RTDetrV2Config}  # small_rtdetr_config's families


def rtdetr_r18vd_config(id2label: Mapping[int, str] | None = None):
    """The configuration of ``PekingU/rtdetr_r18vd``, built offline.

    ResNet-18-vd backbone (basic blocks, depths [2, 2, 2, 2], widths 64..512), a hybrid encoder over
    its last three stages (128, 256, 512 channels, hidden_expansion 0.5) and a 3-layer decoder; COCO's
    80 labels unless ``id2label`` says otherwise. 20,174,608 parameters with 80 labels.
    """
    id2label = dict(COCO_ID2LABEL if id2label is None else id2label)
    backbone_config = RTDetrResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    return RTDetrConfig(
        backbone_config=backbone_config,
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )


def check_small_family(family: str) -> None:
    """Refuse, in one line naming DEMO_DETECTOR_FAMILY, a family ``small_rtdetr_config`` cannot build."""
    if family not in SMALL_CONFIGS:
        raise SettingError(f"DEMO_DETECTOR_FAMILY: {family!r} has no small demo configuration; use one of "
                           f"{sorted(SMALL_CONFIGS)}")


def small_rtdetr_config(
    id2label: Mapping[int, str],
    base_width: int = 32,
    d_model: int = 128,
    decoder_layers: int = 3,
    num_queries: int = 30,
    num_denoising: int = 30,
    family: str = "rt_detr",
):
    """A small RT-DETR (``family="rt_detr"``) or RT-DETRv2 (``"rt_detr_v2"``, same sizes, its own
    decoder) for CPU demos and tests: ResNet basic blocks of depth 1 per stage.

    Backbone widths ``base_width * (1, 2, 4, 8)``; the encoder reads the last three stages. With the
    defaults (32..256 wide, d_model 128, 3 decoder layers, 30 queries) it has about 4.8M parameters.
    """
    check_small_family(family)
    id2label = {int(index): name for index, name in id2label.items()}
    widths = [base_width * factor for factor in (1, 2, 4, 8)]
    backbone_config = RTDetrResNetConfig(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=widths,
        embedding_size=base_width,
        downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    heads = max(1, d_model // 32)
    return SMALL_CONFIGS[family](
        backbone_config=backbone_config,
        encoder_in_channels=widths[1:],
        encoder_hidden_dim=d_model,
        encoder_ffn_dim=2 * d_model,
        encoder_attention_heads=heads,
        hidden_expansion=0.5,
        d_model=d_model,
        decoder_in_channels=[d_model] * 3,
        decoder_ffn_dim=2 * d_model,
        decoder_attention_heads=heads,
        decoder_layers=decoder_layers,
        num_queries=num_queries,
        num_denoising=num_denoising,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter; returns the model."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_detector(source) -> nn.Module:
    """A frozen object detector of a supported family (utils/models/detector_adapters.ADAPTERS).

    Args:
        source: a hub id (``"PekingU/rtdetr_r18vd"``), a local ``save_pretrained`` directory, or a
            transformers config object (random initialisation, for tests and the demo).

    Returns:
        The model in eval mode with every parameter ``requires_grad=False``, its family's adapter
        attached (``adapter_of``): built from the checkpoint's ``preprocessor_config.json``, or from
        the family's defaults when there is none (and for a config object). An unsupported
        ``model_type`` is refused before any weights are read.
    """
    if isinstance(source, PretrainedConfig):
        return attach_adapter(freeze(AutoModelForObjectDetection.from_config(source)), None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"detector source must be a hub id, a directory or a config, got {type(source).__name__}")
    source = os.fspath(source)
    looks_local = os.path.isabs(source) or source.startswith(".") or os.path.exists(source)
    if looks_local and not os.path.isdir(source):
        raise MissingFileError(f"DETECTOR: directory {source!r} does not exist")
    if looks_local and not os.path.isfile(os.path.join(source, "config.json")):
        raise MissingFileError(
            f"DETECTOR: directory {source!r} has no config.json: point DETECTOR at a folder written by "
            "save_pretrained (config.json plus model.safetensors)"
        )
    try:
        adapter_class(AutoConfig.from_pretrained(source))
        model = AutoModelForObjectDetection.from_pretrained(source)
    except OSError as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MissingFileError(
            f"DETECTOR: could not load {source!r}: it is not a local directory, and the hub could not "
            "be reached or has no such model. Download it once where there is a network "
            f"(`hf download {source} --local-dir ./weights/{source.split('/')[-1]}`) and set DETECTOR to that "
            f"local directory ({detail})"
        ) from None
    # weights kept in fp16 (the demo's) run in fp32 like any other
    return attach_adapter(freeze(model.float()), read_processor_config(source))


def attach_adapter(detector: nn.Module, processor: dict | None) -> nn.Module:
    """Set the detector's family adapter (``processor``: its preprocessor_config.json, or None)."""
    setattr(detector, ADAPTER_ATTRIBUTE, adapter_class(detector.config)(detector.config, processor))
    return detector


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_state_lines(spdnet: nn.Module, detector: nn.Module) -> list[str]:
    """The lines the training script prints about its model: trainable and total parameters of SPDNet,
    of the detector (marked FROZEN when none of it trains) and of both."""
    spdnet_total, spdnet_trainable = count_parameters(spdnet), count_parameters(spdnet, True)
    detector_total, detector_trainable = count_parameters(detector), count_parameters(detector, True)
    total, trainable = spdnet_total + detector_total, spdnet_trainable + detector_trainable

    def percent(part: int, whole: int) -> str:
        value = 100.0 * part / whole if whole else 0.0
        return f"{value:.0f}%" if value in (0.0, 100.0) else f"{value:.1f}%"

    detector_note = " - FROZEN" if detector_trainable == 0 else ""
    return [
        f"SPDNet: {spdnet_trainable:,} trainable parameters ({percent(spdnet_trainable, spdnet_total)})",
        f"{adapter_of(detector).title}: {detector_trainable:,} trainable parameters "
        f"({percent(detector_trainable, detector_total)}{detector_note})",
        f"Total parameters: {total:,}",
        f"Trainable parameters: {trainable:,} ({percent(trainable, total)})",
    ]


def detector_fingerprint(detector: nn.Module) -> str:
    """SHA-256 over the detector's state_dict: what "the detector never changes" is checked against."""
    return state_dict_sha256(detector)


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state_dict: names, dtypes, shapes and raw bytes of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

"""Factories for the models every script builds: SPDNet from weights, the device to run on."""

from __future__ import annotations

import os

import torch

from utils.checkpoint import check_finite, load_checkpoint


def choose_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is taken as a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def enable_fast_cuda_math(device: torch.device) -> None:
    """TF32 matmuls and convolutions plus cudnn autotuning on CUDA (fixed-size training inputs)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def build_spdnet(weights: str | None, n_feats: int, n_resblocks: int):
    """SPDNet of the given size, with ``weights`` (a path or None for random init) loaded.

    Files written by this project (spdnet_adapted.pt, checkpoint.pt) record their own size, which
    wins over ``n_feats`` / ``n_resblocks``; official checkpoints are loaded at the given size.
    A file holding a NaN or inf tensor is refused (NonFiniteTensorError naming the file and the tensor).
    """
    from utils.spdnet import SPDNet, load_spdnet_weights

    if weights is None:
        return SPDNet(n_feats=n_feats, n_resblocks=n_resblocks)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"SPDNet weights {weights!r} do not exist")
    checkpoint = load_checkpoint(weights)
    check_finite(checkpoint, f"SPDNet weights {weights}")
    if isinstance(checkpoint, dict):
        config = checkpoint.get("config") or {}
        n_feats = checkpoint.get("n_feats", config.get("SPDNET_N_FEATS", n_feats))
        n_resblocks = checkpoint.get("n_resblocks", config.get("SPDNET_N_RESBLOCKS", n_resblocks))
    spdnet = SPDNet(n_feats=n_feats, n_resblocks=n_resblocks)
    load_spdnet_weights(spdnet, checkpoint)
    return spdnet

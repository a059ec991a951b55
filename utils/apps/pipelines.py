"""Every model the scripts run, assembled here, and the files they are saved in.

    training model   image -> SPDNet (SPDNET_WEIGHTS, trained) -> RT-DETR (DETECTOR, frozen)
    vanilla          image -> RT-DETR
    original         image -> original SPDNet (SPDNET_WEIGHTS) -> RT-DETR
    adapted          image -> adapted SPDNet (ADAPTED_WEIGHTS: spdnet_adapted.pt) -> RT-DETR
    conditional      image -> gate (GATE_WEIGHTS: the detector-view gate's utility_gate.pt, or a rain
                     gate's rain_detector.pt) -> adapted or vanilla

The saved-file contract: the names of the files a run writes in OUTPUT_DIR, what ``spdnet_adapted.pt``
records (``adapted_weights``), and loading it with the check that it was adapted to this detector
(``load_adapted_spdnet``), wherever adapted weights are loaded. Every file is read with
``torch.load(..., weights_only=True)`` (utils/runtime/checkpoint.load_weights_file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from utils.runtime.checkpoint import check_finite, load_weights_file
from utils.runtime.device import check_precision
from utils.runtime.errors import MissingFileError, UserError
from utils.models.conditional import CONFIDENCE_RULE, ConditionalModel, ConfidenceRule
from utils.models.detector import load_detector
from utils.models.detector_view import ViewHead, view_size
from utils.models.integrated_model import IntegratedModel
from utils.models.rain_gate import load_rain_detector
from utils.models.spdnet import SPDNet, SPDNetCheckpointError, load_spdnet_weights

SOFT_MIX_INITIAL = 0.9  # the mix weight m every image starts at (SOFT_MIX): close to the plain adaptation's 1,
#   a prior, not tuned on any split
ADAPTED_FILE = "spdnet_adapted.pt"  # the best adapted SPDNet (adapted_weights says what it records)
CHECKPOINT_FILE = "checkpoint.pt"  # everything a resumed training needs
GATE_FILE = "rain_detector.pt"  # the rain gate, its threshold and calibration (RainDetector.checkpoint)
UTILITY_GATE_FILE = "utility_gate.pt"  # the utility gate, in the rain gate's format (+ kind "utility", mode)


class DetectorMismatchError(UserError, ValueError):
    """Adapted weights loaded in front of another detector than the one they were adapted to."""


def build_spdnet(weights: str | None, n_feats: int, n_resblocks: int, setting: str = "SPDNET_WEIGHTS"):
    """SPDNet of the given size, with ``weights`` (a path or None for random init) loaded.

    Files written by this project (spdnet_adapted.pt, checkpoint.pt) record their own size, which
    wins over ``n_feats`` / ``n_resblocks``; official checkpoints are loaded at the given size.
    A missing or unreadable file, or one holding a NaN or inf tensor, is refused with an error
    naming ``setting`` and the file.
    """
    if weights is None:
        return SPDNet(n_feats=n_feats, n_resblocks=n_resblocks)
    checkpoint = load_weights_file(weights, setting)
    check_finite(checkpoint, f"SPDNet weights {weights}")
    if isinstance(checkpoint, dict):
        config = checkpoint.get("config") or {}
        n_feats = checkpoint.get("n_feats", config.get("SPDNET_N_FEATS", n_feats))
        n_resblocks = checkpoint.get("n_resblocks", config.get("SPDNET_N_RESBLOCKS", n_resblocks))
    spdnet = SPDNet(n_feats=n_feats, n_resblocks=n_resblocks)
    try:
        load_spdnet_weights(spdnet, checkpoint)
    except SPDNetCheckpointError as error:
        raise SPDNetCheckpointError(f"{setting}: {weights!r}: {error}") from None
    return spdnet


def gate_weights_path(config: dict) -> str:
    """GATE_WEIGHTS, or OUTPUT_DIR/utility_gate.pt (the default gate, Training_Utility_Gate.py's), which must
    exist."""
    path = config["GATE_WEIGHTS"] or os.path.join(config["OUTPUT_DIR"], UTILITY_GATE_FILE)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"GATE_WEIGHTS: gate {path!r} does not exist: run Training_Utility_Gate.py first (the detector-view "
            "gate, with the same OUTPUT_DIR) or set GATE_WEIGHTS (a rain gate: Training_Rain_Detector.py's "
            f"{GATE_FILE})")
    return path


def adapted_weights_path(config: dict) -> str:
    """ADAPTED_WEIGHTS, or OUTPUT_DIR/spdnet_adapted.pt, which must exist."""
    path = config["ADAPTED_WEIGHTS"] or os.path.join(config["OUTPUT_DIR"], ADAPTED_FILE)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"ADAPTED_WEIGHTS: adapted SPDNet {path!r} does not exist: run Training_SPDNet_Adaptation.py first "
            "(with the same OUTPUT_DIR) or set ADAPTED_WEIGHTS"
        )
    return path


def adapted_weights(config: dict, model: IntegratedModel, epoch: int, metrics: dict) -> dict:
    """What spdnet_adapted.pt holds: SPDNet's weights plus what they were trained for."""
    return {
        "spdnet": model.spdnet.state_dict(),
        **mix_head_record(model),
        # The model's own size: a weights file that records its size wins over SPDNET_N_FEATS.
        "n_feats": model.spdnet.n_feats,
        "n_resblocks": model.spdnet.n_resblocks,
        "config": dict(config),
        "detector": config["DETECTOR"],
        "detector_fingerprint": model.detector_fingerprint(),
        "epoch": epoch,
        "val_metrics": {key: value for key, value in metrics.items() if isinstance(value, float)},
    }


def mix_head_record(model: IntegratedModel) -> dict:
    """The mix head's weights and sizes (SOFT_MIX), for a weights file; {} without one."""
    if model.mix_head is None:
        return {}
    return {"mix_head": model.mix_head.state_dict(), "mix_head_sizes": model.mix_head.sizes()}


def load_adapted_spdnet(config: dict, detector: torch.nn.Module) -> IntegratedModel:
    """The adapted SPDNet (ADAPTED_WEIGHTS) in front of ``detector``, with its mix head when it was trained
    with one (SOFT_MIX), refused when the file records that it was adapted to another detector (SHA-256
    fingerprints differ)."""
    path = adapted_weights_path(config)
    model = IntegratedModel(
        build_spdnet(path, config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"], "ADAPTED_WEIGHTS"), detector)
    saved = load_weights_file(path, "ADAPTED_WEIGHTS")
    if "mix_head" in saved:
        model.mix_head = ViewHead(**saved["mix_head_sizes"])
        model.mix_head.load_state_dict(saved["mix_head"])
        model.mix_head.eval()
    recorded = saved.get("detector_fingerprint")
    if recorded is not None and recorded != model.detector_fingerprint():
        raise DetectorMismatchError(
            f"ADAPTED_WEIGHTS: {path} was adapted to another detector than DETECTOR={config['DETECTOR']!r} "
            "(fingerprints differ): use the detector it was trained against"
        )
    return model


def build_training_model(config: dict, device: torch.device) -> IntegratedModel:
    """SPDNet (from SPDNET_WEIGHTS) in front of the frozen DETECTOR, on ``device``."""
    if config["SPDNET_WEIGHTS"] is None:
        print("warning: SPDNET_WEIGHTS is None, SPDNet starts from a random initialisation", flush=True)
    spdnet = build_spdnet(config["SPDNET_WEIGHTS"], config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"])
    spdnet.gradient_checkpointing = config["GRADIENT_CHECKPOINTING"]
    model = IntegratedModel(spdnet, load_detector(config["DETECTOR"]), channels_last=config["CHANNELS_LAST"])
    if config.get("FEATURE_LOSS_WEIGHT") or config.get("SOFT_MIX"):
        model.adapter.require_features()  # refused now, not at the first batch
    if config.get("SOFT_MIX"):
        model.mix_head = ViewHead(view_size(model.adapter, model.detector), initial=SOFT_MIX_INITIAL)
    return model.to(device)


def build_detector_only(detector: torch.nn.Module) -> IntegratedModel:
    """The vanilla pipeline on its own: ``model(images, derain=False)`` is the detector (the stand-in
    SPDNet is the smallest there is and never runs)."""
    return IntegratedModel(SPDNet(2, 1), detector)


@dataclass
class Pipelines:
    detector: torch.nn.Module
    original: IntegratedModel  # with derain=False it is the vanilla detector
    adapted: IntegratedModel

    def runs(self):
        """(name, model, derain) for each pipeline, in table order."""
        return [("vanilla", self.original, False), ("original", self.original, True), ("adapted", self.adapted, True)]


def build_three_pipelines(config: dict, device: torch.device) -> Pipelines:
    """The frozen detector, the original SPDNet and the adapted one; every file checked up front."""
    check_precision(config["PRECISION"])
    adapted_weights_path(config)
    detector = load_detector(config["DETECTOR"])
    original = build_spdnet(config["SPDNET_WEIGHTS"], config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"])
    adapted = load_adapted_spdnet(config, detector)
    return Pipelines(
        detector=detector,
        original=IntegratedModel(original, detector).to(device).eval(),
        adapted=adapted.to(device).eval(),
    )


def build_conditional_model(config: dict, device: torch.device, routing: str = "hard"):
    """The rain gate, the adapted SPDNet and the frozen detector; files checked before any work.
    ``routing``: "hard" or "soft" (utils.models.conditional)."""
    check_precision(config["PRECISION"])
    adapted_weights_path(config)
    rule = config["GATE_WEIGHTS"] == CONFIDENCE_RULE
    gate_path = None if rule else gate_weights_path(config)
    integrated = load_adapted_spdnet(config, load_detector(config["DETECTOR"]))
    gate = ConfidenceRule(integrated) if rule else load_rain_detector(gate_path, integrated.detector)
    return ConditionalModel(gate, integrated, routing).to(device).eval()

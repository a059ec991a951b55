"""Training the utility gate (Training_Utility_Gate.py): a router learnt from the frozen detector's
own loss, not from rain labels (docs/rain_gate.md, "The utility gate").

    gain: per image, target 1 when L(x) - L(SPDNet(x)) > UTILITY_MARGIN; BCE on the gate's logit
    soft: the detector's loss of g * SPDNet(x) + (1 - g) * x, g = sigmoid(gate logit), end to end

Both train the rain gate's RainDetector through the rain gate's run (data, resume, epoch loop:
utils/apps/gate_training.py); only the loss and the val truth differ. After every epoch the threshold
and temperature are chosen on val against the oracle (per image, the path with the lower detector
loss), and the epoch most accurate against it is saved as OUTPUT_DIR/utility_gate.pt in the rain
gate's format, so load_rain_detector and ConditionalModel take it unchanged.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from utils.apps.gate_training import GateRun, build_gate_data, fit_gate, gate_logits, threshold_metrics
from utils.apps.pipelines import UTILITY_GATE_FILE, adapted_weights_path, load_adapted_spdnet
from utils.data.coco import check_data_dirs, non_empty
from utils.models.detector import freeze, load_detector
from utils.models.integrated_model import IntegratedModel, check_image_size
from utils.runtime.checkpoint import seed_everything
from utils.runtime.config import check_fractions
from utils.runtime.device import choose_device
from utils.runtime.errors import SettingError
from utils.training.engine import detector_targets
from utils.training.gate_metrics import classification_metrics
from utils.training.utility import gain_loss, path_losses, soft_routing_loss, utility_targets

UTILITY_MODES = ("gain", "soft")
UTILITY_CHECKPOINT_FILE = "utility_gate_checkpoint.pt"  # everything a resumed utility gate training needs
UTILITY_LOG_NAME = "utility_gate_log.jsonl"  # one JSON line per LOG_EVERY_STEPS steps and per epoch
# The rain gate's data settings the utility gate leaves at "off": its targets come from the detector's
# loss on the very image it sees, and its images are the detector's (IMAGE_SIZE).
NO_DIVERSITY = {"EPOCH_VARIANTS": False, "RANDOM_RAIN": 0.0, "AUGMENT_BLUR": 0.0, "AUGMENT_JPEG": 0.0,
                "AUGMENT_JITTER": 0.0, "AUGMENT_NOISE": 0.0}


def check_utility_config(config: dict) -> None:
    """UTILITY_MODE, LIBRARY_WEATHER and IMAGE_SIZE refused in one line before any work."""
    if config["UTILITY_MODE"] not in UTILITY_MODES:
        raise SettingError(f"UTILITY_MODE must be one of {UTILITY_MODES}, got {config['UTILITY_MODE']!r}")
    check_fractions(config, ("LIBRARY_WEATHER",))
    check_image_size(config["IMAGE_SIZE"])


def frozen_paths(config: dict, device: torch.device) -> IntegratedModel:
    """The adapted SPDNet (ADAPTED_WEIGHTS) in front of the frozen DETECTOR, both frozen, in eval mode."""
    integrated = load_adapted_spdnet(config, load_detector(config["DETECTOR"]))
    freeze(integrated.spdnet)
    return integrated.to(device).eval()


@torch.no_grad()
def oracle_labels(integrated: IntegratedModel, loader: DataLoader, device: torch.device, margin: float):
    """(N,) 0/1 per image of ``loader``, in its order: 1 where SPDNet's path has the lower detector
    loss, by more than ``margin`` (``utility_targets``)."""
    labels = []
    for images, targets in non_empty(loader):
        losses = path_losses(integrated, images.to(device), detector_targets(targets, device))
        labels.append(utility_targets(*losses, margin).cpu())
    return torch.cat(labels)


def utility_loss(gate, integrated: IntegratedModel, config: dict, device: torch.device):
    """The loss of one batch for UTILITY_MODE: "gain" (BCE against the per-image targets) or "soft"
    (the detector's loss of the blended image); the gradient reaches the gate only."""
    mode, margin = config["UTILITY_MODE"], config["UTILITY_MARGIN"]

    def loss_of_batch(images, targets):
        images, labels = images.to(device, non_blocking=True), detector_targets(targets, device)
        if mode == "gain":
            return gain_loss(gate, integrated, images, labels, margin)[0], {}
        return soft_routing_loss(gate, integrated, images, labels)[0], {}

    return loss_of_batch


class UtilityRun(GateRun):
    """The rain gate's run, scored against the oracle and saved as utility_gate.pt."""

    gate_file, checkpoint_file = UTILITY_GATE_FILE, UTILITY_CHECKPOINT_FILE

    def __init__(self, config: dict, data, device: torch.device, integrated: IntegratedModel):
        super().__init__(config, data, device, detector=integrated.detector)
        self.integrated, self.fingerprint = integrated, integrated.detector_fingerprint()
        margin = config["UTILITY_MARGIN"]
        self.oracle = oracle_labels(integrated, data.val, device, margin)
        self.held_out_oracle = oracle_labels(integrated, data.held_out, device, margin) if data.held_out else None
        print(f"oracle: SPDNet lowers the detector's loss (by > {margin:g}) on {int(self.oracle.sum())} of "
              f"{len(self.oracle)} val images", flush=True)

    def score(self, epoch: int) -> dict:
        """Threshold (best val accuracy against the oracle), temperature and metrics, printed."""
        metrics = threshold_metrics(gate_logits(self.model, self.data.val, self.device)[0], self.oracle, epoch)
        metrics["oracle_derain_share"] = float(self.oracle.mean())
        print(f"epoch {epoch}: vs the oracle on val: accuracy {metrics['accuracy']:.4f}, precision "
              f"{metrics['precision']:.4f}, recall {metrics['recall']:.4f} of \"SPDNet helps\" at threshold "
              f"{metrics['threshold']:.3f} (calibration temperature {metrics['temperature']:.3g})", flush=True)
        if self.held_out_oracle is not None:
            logits = gate_logits(self.model, self.data.held_out, self.device)[0]
            held = classification_metrics(torch.sigmoid(logits), self.held_out_oracle, metrics["threshold"])
            metrics["held_out"] = held
            print(f"epoch {epoch}: vs the oracle on held-out {self.config['HOLDOUT_FAMILY']} rain (with the clean "
                  f"val images): accuracy {held['accuracy']:.4f}, precision {held['precision']:.4f}, "
                  f"recall {held['recall']:.4f}", flush=True)
        return metrics

    def saved(self, metrics: dict, epoch: int) -> dict:
        """The rain gate's file, marked ``kind: "utility"`` with its mode, margin and detector."""
        return dict(super().saved(metrics, epoch), kind="utility", mode=self.config["UTILITY_MODE"],
                    margin=self.config["UTILITY_MARGIN"], detector=self.config["DETECTOR"],
                    detector_fingerprint=self.fingerprint)


def train_utility_gate(config: dict) -> dict:
    """Train the utility gate with Training_Utility_Gate.py's settings (``config``: every one of them);
    files checked before any model loads. Returns the best epoch's metrics against the oracle (its
    threshold, temperature, epoch, ``held_out``), plus ``stopped`` when a signal ended the run early."""
    check_utility_config(config)
    adapted_weights_path(config)
    check_data_dirs(config["COCO_DIR"], config["COCO_RAIN_DIR"], ["train", "val"])
    device = choose_device(config["DEVICE"])
    seed_everything(config["SEED"])
    os.makedirs(config["OUTPUT_DIR"], exist_ok=True)
    integrated = frozen_paths(config, device)
    data_config = {**config, **NO_DIVERSITY, "GATE_IMAGE_SIZE": config["IMAGE_SIZE"]}
    data = build_gate_data(data_config, device, integrated.detector.config.id2label)
    run = UtilityRun(config, data, device, integrated)
    loss_of_batch = utility_loss(run.model, integrated, config, device)
    return fit_gate(run, loss_of_batch, UTILITY_LOG_NAME, f"utility gate ({config['UTILITY_MODE']})")

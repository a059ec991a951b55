"""Training the rain gate (Training_Rain_Detector.py and the demo): data, the loop, threshold and
calibration chosen on val after every epoch, the best epoch saved."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.apps.pipelines import GATE_FILE
from utils.data.coco import build_dataset, collate_fn, loader_settings, non_empty, rain_variant_dirs
from utils.data.gate_data import GateTrainingSet
from utils.data.rain import FAMILIES, split_by_family
from utils.models.rain_gate import RainDetector
from utils.runtime.checkpoint import atomic_save, seed_everything
from utils.runtime.device import choose_device
from utils.training.gate_metrics import choose_threshold, classification_metrics, fit_temperature


def train_rain_detector(config: dict) -> dict:
    """Train the gate with Training_Rain_Detector.py's settings (``config``: every one of them), choose
    its threshold and calibration on val after every epoch, keep the most accurate epoch in
    OUTPUT_DIR/rain_detector.pt. Training_Rain_Detector.py and the demo both call this.

    Returns the best epoch's val metrics with its threshold, temperature and epoch (and ``held_out``).
    """
    device = choose_device(config["DEVICE"])
    seed_everything(config["SEED"])
    holdout = config["HOLDOUT_FAMILY"]
    if holdout is not None and holdout not in FAMILIES:
        raise ValueError(f"HOLDOUT_FAMILY must be one of {FAMILIES} or None, got {holdout!r}")
    diversity = {
        "blur": config["AUGMENT_BLUR"], "jpeg": config["AUGMENT_JPEG"], "jitter": config["AUGMENT_JITTER"],
        "noise": config["AUGMENT_NOISE"],
    }
    diverse = config["RANDOM_RAIN"] > 0 or any(value > 0 for value in diversity.values())

    def rain_dirs(name: str) -> tuple[list[str] | str, list[str]]:
        """COCO_RAIN_DIR's variants for the gate, and those of HOLDOUT_FAMILY (scored apart)."""
        if holdout is None:
            return config["COCO_RAIN_DIR"], []
        kept, held_out = split_by_family(rain_variant_dirs(config["COCO_RAIN_DIR"], name), holdout)
        if not kept:
            raise ValueError(f"HOLDOUT_FAMILY={holdout!r} leaves no rain variant of COCO_RAIN_DIR={config['COCO_RAIN_DIR']!r} to train on")
        return kept, held_out

    def split(name: str, percent: float, train: bool, coco_rain_dir) -> DataLoader:
        # Labels are irrelevant here; the dataset still needs an id2label to map its categories.
        dataset = build_dataset(
            config["COCO_DIR"], coco_rain_dir, name, None, image_size=config["IMAGE_SIZE"], train=train,
            percent=percent, coco_ratio=0.5, rain_ratio=0.5, seed=config["SEED"],
            return_clean_pair=train and config["RANDOM_RAIN"] > 0,
        )
        if len(dataset) == 0:
            setting = "PERCENT_DATASET" if train else "VAL_PERCENT"
            raise ValueError(f"{setting}={percent} leaves no {name} image of COCO_DIR={config['COCO_DIR']!r}: raise {setting}")
        if train and diverse:
            families = [family for family in FAMILIES if family != holdout]
            dataset = GateTrainingSet(dataset, families, config["RANDOM_RAIN"], **diversity)
        return DataLoader(
            dataset, batch_size=config["BATCH_SIZE"], shuffle=train, drop_last=train, collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(config["SEED"]),
            **loader_settings(config["DATALOADER_WORKERS"], device),
        )

    train_rain, _ = rain_dirs("train")
    val_rain, held_out_rain = rain_dirs("val")
    train_loader = split("train", config["PERCENT_DATASET"], True, train_rain)
    val_loader = split("val", config["VAL_PERCENT"], False, val_rain)
    held_out_loader = split("val", config["VAL_PERCENT"], False, held_out_rain) if held_out_rain else None
    if holdout is not None and held_out_loader is None:
        print(f"COCO_RAIN_DIR has no {holdout} variant: held-out scoring is left to Eval_conditional.py (HOLDOUT_RAIN_DIR)", flush=True)
    model = RainDetector(config["ARCHITECTURE"], config["INPUT_SIZE"], imagenet_weights=config["IMAGENET_WEIGHTS"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["LEARNING_RATE"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["NUM_EPOCHS"] * len(train_loader))

    def rain_labels(targets) -> torch.Tensor:
        return torch.tensor([float(t["is_rainy"]) for t in targets], device=device)

    @torch.no_grad()
    def validation_logits(loader: DataLoader):
        model.eval()
        logits, truth = [], []
        for images, targets in non_empty(loader):
            logits.append(model(images.to(device)).float().cpu())
            truth.append(rain_labels(targets).cpu())
        return torch.cat(logits), torch.cat(truth)

    path = os.path.join(config["OUTPUT_DIR"], GATE_FILE)
    best = None
    for epoch in range(config["NUM_EPOCHS"]):
        if config["EPOCH_VARIANTS"]:
            train_loader.dataset.set_epoch(epoch)
        model.train()
        progress = tqdm(train_loader, desc=f"rain detector epoch {epoch + 1}", dynamic_ncols=True)
        for images, targets in non_empty(progress):
            logits = model(images.to(device, non_blocking=True))
            loss = F.binary_cross_entropy_with_logits(logits, rain_labels(targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress.set_postfix(loss=f"{loss.item():.4f}")
        logits, truth = validation_logits(val_loader)
        scores = torch.sigmoid(logits)
        threshold = choose_threshold(scores, truth)
        metrics = classification_metrics(scores, truth, threshold)
        temperature = fit_temperature(logits, truth)
        print(
            f"epoch {epoch + 1}: val accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
            f"recall {metrics['recall']:.4f} at threshold {threshold:.3f} (calibration temperature {temperature:.3g})", flush=True,
        )
        held_out = {}
        if held_out_loader is not None:
            held_logits, held_truth = validation_logits(held_out_loader)
            held_out = classification_metrics(torch.sigmoid(held_logits), held_truth, threshold)
            print(
                f"epoch {epoch + 1}: held-out {holdout} rain (with the clean val images): accuracy {held_out['accuracy']:.4f}, "
                f"precision {held_out['precision']:.4f}, recall {held_out['recall']:.4f}", flush=True,
            )
        if best is None or metrics["accuracy"] > best["accuracy"]:
            best = dict(metrics, threshold=threshold, temperature=temperature, epoch=epoch + 1)
            if held_out:
                best["held_out"] = held_out
            model.threshold, model.temperature = threshold, temperature
            atomic_save(model.checkpoint(val_metrics=metrics, held_out_metrics=held_out, holdout_family=holdout,
                                         config=dict(config), epoch=epoch + 1), path)
    print(f"saved {path} (epoch {best['epoch']}, accuracy {best['accuracy']:.4f}, threshold {best['threshold']:.3f})")
    return best

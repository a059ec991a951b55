"""The rain gate: a small image classifier that returns P(rain) for each image.

It looks at a downscaled copy of the image (rain streaks and haze survive downscaling well enough to
be seen at 224 px), so it costs a few milliseconds next to SPDNet's full-resolution pass. Its decision
threshold is chosen on validation data by Training_Rain_Detector.py and saved with the weights, with a
calibration temperature T fitted on the same data: ``probability(images, calibrated=True)`` is
sigmoid(logit / T), the P(rain) soft routing blends with. T changes no decision: the threshold stays on
the uncalibrated probability.

``GateTrainingSet`` makes the gate's training data diverse: rain re-rendered with randomised
settings, and the blur, JPEG, colour and noise a real camera adds.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from utils.checkpoint import load_weights_file
from utils.rain import PRESETS, family_presets, gaussian_blur, render_rain

ARCHITECTURES = ("small_cnn", "mobilenet_v3_small", "resnet18")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def small_cnn() -> nn.Module:
    """Five stride-2 conv blocks and a global pool: ~100k parameters, enough to see streaks and haze."""
    layers, channels = [], 3
    for width in (16, 32, 64, 96, 128):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


def build_backbone(architecture: str, imagenet_weights: str | None = None) -> nn.Module:
    """A one-logit classifier; torchvision models may start from ImageNet weights in a local file."""
    import torchvision

    if architecture == "small_cnn":
        if imagenet_weights:
            raise ValueError("small_cnn has no ImageNet weights; use mobilenet_v3_small or resnet18")
        return small_cnn()
    if architecture not in ARCHITECTURES:
        raise ValueError(f"rain detector architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    model = getattr(torchvision.models, architecture)(weights=None)
    if imagenet_weights:
        state_dict = load_weights_file(imagenet_weights, "IMAGENET_WEIGHTS")
        try:
            model.load_state_dict(state_dict)
        except (RuntimeError, TypeError) as error:
            detail = str(error).strip().splitlines()[0]
            raise ValueError(f"IMAGENET_WEIGHTS: {imagenet_weights!r} is not a torchvision {architecture} state dict ({detail})") from None
    if architecture == "resnet18":
        model.fc = nn.Linear(model.fc.in_features, 1)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, 1)
    return model


class RainDetector(nn.Module):
    """images (B, 3, H, W) in 0-1, any size -> rain logits (B,). ``probability`` gives P(rain)."""

    def __init__(self, architecture: str = "small_cnn", input_size: int = 224, threshold: float = 0.5,
                 imagenet_weights: str | None = None, temperature: float = 1.0):
        super().__init__()
        self.architecture = architecture
        self.input_size = input_size
        self.threshold = threshold
        self.temperature = temperature
        self.backbone = build_backbone(architecture, imagenet_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone((small - self.mean) / self.std).squeeze(1)

    @torch.no_grad()
    def probability(self, images: torch.Tensor, calibrated: bool = False) -> torch.Tensor:
        """(B,) P(rain) in 0-1; ``calibrated``: sigmoid(logit / temperature), fitted on validation data."""
        logits = self(images).float()
        return torch.sigmoid(logits / self.temperature if calibrated else logits)

    @torch.no_grad()
    def is_rainy(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) bool: P(rain) at or above the saved threshold."""
        return self.probability(images) >= self.threshold

    def checkpoint(self, **metadata) -> dict:
        return {
            "state_dict": self.state_dict(), "architecture": self.architecture, "input_size": self.input_size,
            "threshold": float(self.threshold), "temperature": float(self.temperature), **metadata,
        }


def load_rain_detector(path: str) -> RainDetector:
    """A RainDetector saved by Training_Rain_Detector.py, in eval mode, with its chosen threshold and
    calibration temperature (1, no calibration, for files saved before calibration existed)."""
    checkpoint = load_weights_file(path, "RAIN_DETECTOR_WEIGHTS")
    missing = [key for key in ("state_dict", "architecture", "input_size", "threshold") if key not in checkpoint]
    if missing:
        raise ValueError(f"RAIN_DETECTOR_WEIGHTS: {path} is not a rain detector checkpoint: missing {', '.join(missing)}")
    model = RainDetector(checkpoint["architecture"], checkpoint["input_size"], checkpoint["threshold"],
                         temperature=checkpoint.get("temperature", 1.0))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def choose_threshold(probabilities: torch.Tensor, is_rainy: torch.Tensor) -> float:
    """The threshold with the best validation accuracy (ties: the one nearest 0.5).

    Candidates are the midpoints between consecutive sorted probabilities, so the result separates
    the validation scores as well as any threshold can.
    """
    probabilities, is_rainy = probabilities.double().flatten(), is_rainy.bool().flatten()
    ordered = torch.sort(probabilities).values
    candidates = torch.cat((ordered[:1] - 1e-6, (ordered[1:] + ordered[:-1]) / 2, ordered[-1:] + 1e-6))
    accuracy = ((probabilities[None, :] >= candidates[:, None]) == is_rainy[None, :]).double().mean(1)
    best = accuracy.max()
    tied = candidates[accuracy == best]
    return float(tied[torch.argmin((tied - 0.5).abs())])


def classification_metrics(probabilities: torch.Tensor, is_rainy: torch.Tensor, threshold: float) -> dict:
    """Accuracy, precision and recall of "rainy", and the confusion counts."""
    predicted, actual = probabilities >= threshold, is_rainy.bool()
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    tn = int((~predicted & ~actual).sum())
    total = max(tp + fp + fn + tn, 1)
    return {
        "accuracy": (tp + tn) / total,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "confusion": {"rainy_as_rainy": tp, "clean_as_rainy": fp, "rainy_as_clean": fn, "clean_as_clean": tn},
    }


def fit_temperature(logits: torch.Tensor, is_rainy: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T in 0.02-50 minimising the validation log loss of
    sigmoid(logit / T), on a log-spaced grid (deterministic; a one-parameter fit needs nothing more)."""
    logits, target = logits.double().flatten(), is_rainy.double().flatten()
    temperatures = torch.logspace(-1.7, 1.7, 341, dtype=torch.float64)
    losses = torch.stack([F.binary_cross_entropy_with_logits(logits / t, target) for t in temperatures])
    return float(temperatures[torch.argmin(losses)])


def camera_augment(image: torch.Tensor, rng: np.random.Generator, blur: float, jpeg: float, jitter: float,
                   noise: float) -> torch.Tensor:
    """What a real camera adds to a (3, H, W) 0-1 image: colour and brightness jitter (factors within
    1 +- ``jitter``), a Gaussian blur (probability ``blur``), sensor noise (std up to ``noise``, on
    half the images), JPEG re-encoding at quality 30-90 (probability ``jpeg``)."""
    if jitter > 0:
        image = TF.adjust_brightness(image, rng.uniform(1 - jitter, 1 + jitter))
        image = TF.adjust_contrast(image, rng.uniform(1 - jitter, 1 + jitter))
        image = TF.adjust_saturation(image, rng.uniform(1 - jitter, 1 + jitter))
    if rng.random() < blur:
        image = gaussian_blur(image, rng.uniform(0.3, 1.5))
    if noise > 0 and rng.random() < 0.5:
        image = image + torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)) * rng.uniform(0, noise)
    image = image.clamp(0, 1)
    if rng.random() < jpeg:
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        image = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
    return image


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) 0-1 -> (H, W, 3) uint8, as the rain renderer and PIL take it."""
    return image.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class GateTrainingSet(torch.utils.data.Dataset):
    """A CocoRainDataset's samples, made diverse for the gate: ``random_rain`` of the rainy ones are
    re-rendered from their clean copy (the dataset needs ``return_clean_pair``) with a randomised
    preset of ``families``, then every image gets ``camera_augment``. Every random choice is a
    function of (seed, epoch, image id, clean or rainy), whatever worker loads the sample."""

    def __init__(self, dataset, families: Sequence[str], random_rain: float = 0.0, blur: float = 0.0,
                 jpeg: float = 0.0, jitter: float = 0.0, noise: float = 0.0):
        if random_rain > 0 and not dataset.return_clean_pair:
            raise ValueError("random rain re-renders the clean copy: build the dataset with return_clean_pair=True")
        self.dataset, self.random_rain = dataset, random_rain
        self.presets = [name for family in families for name in family_presets(family)]
        self.camera = {"blur": blur, "jpeg": jpeg, "jitter": jitter, "noise": noise}

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is None:  # unreadable: collate_fn drops it
            return None
        image, target = sample
        clean = target.pop("clean_image", None)
        rng = np.random.default_rng([self.dataset.seed, self.dataset.epoch, target["image_id"], int(target["is_rainy"])])
        if target["is_rainy"] and rng.random() < self.random_rain:
            preset = PRESETS[self.presets[rng.integers(len(self.presets))]].randomised(rng)
            image = torch.from_numpy(render_rain(to_uint8(clean), preset, rng)).permute(2, 0, 1).float() / 255.0
        return camera_augment(image, rng, **self.camera), target



def train_rain_detector(config: dict) -> dict:
    """Train the gate with Training_Rain_Detector.py's settings (``config``: every one of them), choose
    its threshold and calibration on val after every epoch, keep the most accurate epoch in
    OUTPUT_DIR/rain_detector.pt. Training_Rain_Detector.py and the demo both call this.

    Returns the best epoch's val metrics with its threshold, temperature and epoch (and ``held_out``).
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from utils.checkpoint import atomic_save, seed_everything
    from utils.data import build_dataset, collate_fn, loader_settings, non_empty, rain_variant_dirs
    from utils.pipelines import GATE_FILE, choose_device
    from utils.rain import FAMILIES, split_by_family

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

"""Train the rain gate: a small classifier telling rainy images from clean ones.

    python Training_Rain_Detector.py                   # COCO vs COCO_rain
    python Training_Rain_Detector.py configs/demo.py   # the CPU demo world

Chooses its decision threshold on the validation split (best accuracy), fits a calibration
temperature there (soft routing's P(rain); no decision changes), reports accuracy, precision and
recall of "rainy", and saves OUTPUT_DIR/rain_detector.pt.

For a gate that holds on rain it has never seen (docs/rain_gate.md):

    python Training_Rain_Detector.py --HOLDOUT_FAMILY=drops --EPOCH_VARIANTS=True --RANDOM_RAIN=0.5 \
        --AUGMENT_BLUR=0.3 --AUGMENT_JPEG=0.5 --AUGMENT_JITTER=0.2 --AUGMENT_NOISE=0.03

trains on every variant of COCO_RAIN_DIR but the drop family's, and scores the drop variants apart.
"""

from __future__ import annotations

# ---- data
COCO_DIR = "./data/coco"  # clean COCO: train2017/, val2017/, annotations/
COCO_RAIN_DIR = "./data/coco_rain"  # rainy COCO in the same layout (several directories = rain variants)
PERCENT_DATASET = 5.0  # percent of the training images used (half shown clean, half rainy; fractions allowed)
VAL_PERCENT = 20.0  # percent of the validation images used (half clean, half rainy; fractions allowed)
IMAGE_SIZE = 320  # images are loaded at this square size, then the gate downscales to INPUT_SIZE
# ---- rain families and diversity (the defaults train the gate exactly as before they existed)
HOLDOUT_FAMILY = None  # rain family kept out of training and threshold choice ("streaks" or "drops"); its variants in COCO_RAIN_DIR are scored apart
EPOCH_VARIANTS = False  # each epoch draws anew for every image: rain variant, flip, RANDOM_RAIN and AUGMENT_*; False: epoch 1's throughout
RANDOM_RAIN = 0.0  # fraction of rainy training images re-rendered from their clean copy with a randomised preset of every family but HOLDOUT_FAMILY
AUGMENT_BLUR = 0.0  # probability of a Gaussian blur (sigma 0.3-1.5 px) on a training image, clean or rainy
AUGMENT_JPEG = 0.0  # probability of re-encoding a training image as JPEG at quality 30-90
AUGMENT_JITTER = 0.0  # largest relative change of brightness, contrast and saturation (0.2: factors 0.8-1.2)
AUGMENT_NOISE = 0.0  # largest std of Gaussian sensor noise, 0-1 scale (added to half the training images)
# ---- model
ARCHITECTURE = "mobilenet_v3_small"  # "small_cnn", "mobilenet_v3_small" or "resnet18"
IMAGENET_WEIGHTS = None  # a local torchvision ImageNet state dict to start from (None: from scratch)
INPUT_SIZE = 224  # the gate's own input resolution
# ---- optimisation
NUM_EPOCHS = 5  # passes over the training subset
BATCH_SIZE = 32  # images per step
LEARNING_RATE = 1e-3  # AdamW learning rate (cosine decay to 0)
# ---- system
DEVICE = "auto"  # "auto", "cuda", "cpu", ...
DATALOADER_WORKERS = 8  # data loading processes
SEED = 42  # subsets, order and initialisation
OUTPUT_DIR = "./outputs_spdnet_adaptation"  # rain_detector.pt goes here

from utils.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    import os

    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from utils.checkpoint import atomic_save
    from utils.data import build_dataset, collate_fn, loader_settings, rain_variant_dirs
    from utils.pipelines import choose_device
    from utils.rain import FAMILIES, split_by_family
    from utils.rain_detector import (
        GateTrainingSet, RainDetector, choose_threshold, classification_metrics, fit_temperature,
    )
    from utils.training import seed_everything

    config = load_config(globals(), argv)
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
        for batch in loader:
            if batch is None:  # every image of the batch was unreadable
                continue
            images, targets = batch
            logits.append(model(images.to(device)).float().cpu())
            truth.append(rain_labels(targets).cpu())
        return torch.cat(logits), torch.cat(truth)

    best = None
    for epoch in range(config["NUM_EPOCHS"]):
        if config["EPOCH_VARIANTS"]:
            train_loader.dataset.set_epoch(epoch)
        model.train()
        progress = tqdm(train_loader, desc=f"rain detector epoch {epoch + 1}", dynamic_ncols=True)
        for batch in progress:
            if batch is None:  # every image of the batch was unreadable
                continue
            images, targets = batch
            logits = model(images.to(device, non_blocking=True))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, rain_labels(targets))
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
                                         config=dict(config), epoch=epoch + 1),
                        os.path.join(config["OUTPUT_DIR"], "rain_detector.pt"))
    print(f"saved {os.path.join(config['OUTPUT_DIR'], 'rain_detector.pt')} (epoch {best['epoch']}, accuracy {best['accuracy']:.4f}, threshold {best['threshold']:.3f})")
    return best


if __name__ == "__main__":
    main()

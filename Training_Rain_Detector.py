"""Train the rain gate: a small classifier telling rainy images from clean ones.

    python Training_Rain_Detector.py                   # COCO vs COCO_rain
    python Training_Rain_Detector.py configs/demo.py   # the CPU demo world

Chooses its decision threshold on the validation split (best accuracy), reports accuracy, precision
and recall of "rainy", and saves OUTPUT_DIR/rain_detector.pt.
"""

from __future__ import annotations

# ---- data
COCO_DIR = "./data/coco"  # clean COCO: train2017/, val2017/, annotations/
COCO_RAIN_DIR = "./data/coco_rain"  # rainy COCO in the same layout (several directories = rain variants)
PERCENT_DATASET = 5  # percent of the training images used (half shown clean, half rainy)
VAL_PERCENT = 20  # percent of the validation images used (half clean, half rainy)
IMAGE_SIZE = 320  # images are loaded at this square size, then the gate downscales to INPUT_SIZE
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
    from utils.data import build_dataset, collate_fn, loader_settings
    from utils.pipelines import choose_device
    from utils.rain_detector import RainDetector, choose_threshold, classification_metrics
    from utils.training import seed_everything

    config = load_config(globals(), argv)
    device = choose_device(config["DEVICE"])
    seed_everything(config["SEED"])

    def split(name: str, percent: float, train: bool) -> DataLoader:
        # Labels are irrelevant here; the dataset still needs an id2label to map its categories.
        dataset = build_dataset(
            config["COCO_DIR"], config["COCO_RAIN_DIR"], name, None, image_size=config["IMAGE_SIZE"], train=train,
            percent=percent, coco_ratio=0.5, rain_ratio=0.5, seed=config["SEED"],
        )
        return DataLoader(
            dataset, batch_size=config["BATCH_SIZE"], shuffle=train, drop_last=train, collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(config["SEED"]),
            **loader_settings(config["DATALOADER_WORKERS"], device),
        )

    train_loader, val_loader = split("train", config["PERCENT_DATASET"], True), split("val", config["VAL_PERCENT"], False)
    model = RainDetector(config["ARCHITECTURE"], config["INPUT_SIZE"], imagenet_weights=config["IMAGENET_WEIGHTS"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["LEARNING_RATE"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["NUM_EPOCHS"] * len(train_loader))

    def rain_labels(targets) -> torch.Tensor:
        return torch.tensor([float(t["is_rainy"]) for t in targets], device=device)

    @torch.no_grad()
    def validation_scores():
        model.eval()
        scores, truth = [], []
        for batch in val_loader:
            if batch is None:  # every image of the batch was unreadable
                continue
            images, targets = batch
            scores.append(model.probability(images.to(device)).cpu())
            truth.append(rain_labels(targets).cpu())
        return torch.cat(scores), torch.cat(truth)

    best = None
    for epoch in range(config["NUM_EPOCHS"]):
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
        scores, truth = validation_scores()
        threshold = choose_threshold(scores, truth)
        metrics = classification_metrics(scores, truth, threshold)
        print(
            f"epoch {epoch + 1}: val accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
            f"recall {metrics['recall']:.4f} at threshold {threshold:.3f}", flush=True,
        )
        if best is None or metrics["accuracy"] > best["accuracy"]:
            best = dict(metrics, threshold=threshold, epoch=epoch + 1)
            model.threshold = threshold
            atomic_save(model.checkpoint(val_metrics=metrics, config=dict(config), epoch=epoch + 1),
                        os.path.join(config["OUTPUT_DIR"], "rain_detector.pt"))
    print(f"saved {os.path.join(config['OUTPUT_DIR'], 'rain_detector.pt')} (epoch {best['epoch']}, accuracy {best['accuracy']:.4f}, threshold {best['threshold']:.3f})")
    return best


if __name__ == "__main__":
    main()

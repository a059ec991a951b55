"""The CPU demo's stand-ins for what real users download: a pretrained detector, an original SPDNet.

Make_Demo.py builds, in DEMO_DIR (each stage skipped when its output records the same settings):

1. ``data/``: the synthetic world (utils.synthetic), clean + rainy, in the COCO layout;
2. ``detector/``: a small RT-DETR trained from scratch on the clean training images only, written
   with ``save_pretrained`` so that every script loads it through ``load_detector`` like a hub model;
3. ``spdnet_original.pt``: SPDNet trained with pixel MSE on rainy -> clean crops (the official
   recipe's objective), standing in for the official deraining weights;
4. ``rain_detector.pt``: the rain gate, by Training_Rain_Detector.py.

A stage's settings include those of the stages it depends on, so a changed world rebuilds the rest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.checkpoint import atomic_save
from utils.coco_eval import load_coco
from utils.data import build_dataset, collate_fn, loader_settings
from utils.detector import load_detector, small_rtdetr_config
from utils.engine import detector_targets, evaluate
from utils.integrated_model import IntegratedModel
from utils.spdnet import SPDNet
from utils.synthetic import world_id2label

MANIFEST = "demo_settings.json"


def read_manifest(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as file:
        return json.load(file)


def is_built(manifest_path: str, settings: dict, outputs: Sequence[str]) -> bool:
    """True when every output exists and the manifest records exactly ``settings``."""
    manifest = read_manifest(manifest_path)
    return (
        manifest is not None and manifest.get("settings") == settings and all(os.path.exists(path) for path in outputs)
    )


def _loader(dataset, batch_size: int, seed: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed), **loader_settings(workers, device),
    )


def _endless(loader: DataLoader, dataset):
    """Batches across epochs (set_epoch keeps flips and rain variants changing)."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        for batch in loader:
            if batch is not None:
                yield batch
        epoch += 1


def optimise(model, optimizer, loss_of_batch, batches, steps: int, clip_norm: float, description: str) -> None:
    """``steps`` AdamW steps on ``loss_of_batch(images, targets)`` with a one-cycle schedule and
    gradient clipping, under a progress bar (the loss read back only every 20 steps)."""
    max_lr = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    progress = tqdm(range(steps), desc=description, dynamic_ncols=True)
    for step in progress:
        loss = loss_of_batch(*next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        scheduler.step()
        if step % 20 == 0 or step == steps - 1:
            progress.set_postfix(loss=f"{loss.item():.4f}")


def train_detector(settings: dict, coco_dir: str, output_dir: str, device: torch.device, workers: int) -> dict:
    """Train a small RT-DETR on the clean training split; save it to ``output_dir``; score clean val.

    ``settings`` holds the world's settings (its ``num_classes`` give the labels), image_size, seed,
    steps, batch_size, learning_rate and the model's sizes (base_width, d_model, decoder_layers,
    num_queries, num_denoising). Train mode (denoising queries on), AdamW with a one-cycle schedule
    and gradient clipping at 0.1, as RT-DETR's own recipe.
    Returns the clean-val COCO metrics.
    """
    torch.manual_seed(settings["seed"])
    id2label = world_id2label(settings["world"]["num_classes"])
    config = small_rtdetr_config(
        id2label, base_width=settings["base_width"], d_model=settings["d_model"],
        decoder_layers=settings["decoder_layers"], num_queries=settings["num_queries"],
        num_denoising=settings["num_denoising"],
    )
    detector = load_detector(config).to(device)
    for parameter in detector.parameters():
        parameter.requires_grad_(True)
    detector.train()
    dataset = build_dataset(coco_dir, None, "train", id2label, image_size=settings["image_size"], train=True,
                            coco_ratio=1.0, rain_ratio=0.0, seed=settings["seed"])
    batches = _endless(_loader(dataset, settings["batch_size"], settings["seed"], workers, device), dataset)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=settings["learning_rate"], weight_decay=1e-4)

    def detection_loss(images, targets):
        return detector(pixel_values=images.to(device), labels=detector_targets(targets, device)).loss

    optimise(detector, optimizer, detection_loss, batches, settings["steps"], 0.1, "demo detector (clean images)")
    detector.eval()
    staging = output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    detector.save_pretrained(staging)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return score_detector(output_dir, coco_dir, settings["image_size"], device, workers)


def score_detector(detector_dir: str, coco_dir: str, image_size: int, device: torch.device, workers: int) -> dict:
    """Clean-val COCO metrics of a saved detector, loaded back as every script loads it."""
    detector = load_detector(detector_dir).to(device)
    dataset = build_dataset(coco_dir, None, "val", detector.config.id2label, image_size=image_size,
                            coco_ratio=1.0, rain_ratio=0.0)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate_fn, **loader_settings(workers, device))
    coco_gt = load_coco(dataset.annotation_file)
    model = IntegratedModel(SPDNet(2, 1), detector).to(device)  # derain=False below: SPDNet never runs
    with torch.no_grad():
        return evaluate(model, loader, coco_gt, dataset.label_to_category_id, device=device, derain=False,
                        description="demo detector clean val")


def random_crops(images: torch.Tensor, clean: torch.Tensor, size: int, generator: torch.Generator):
    """The same random ``size`` x ``size`` window of each rainy / clean pair: two (B, 3, size, size)."""
    batch, _, height, width = images.shape
    tops = torch.randint(0, height - size + 1, (batch,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,), generator=generator).tolist()
    pick = lambda tensor: torch.stack([t[:, y : y + size, x : x + size] for t, y, x in zip(tensor, tops, lefts)])
    return pick(images), pick(clean)


def deraining_loss(outputs: Sequence[torch.Tensor], clean: torch.Tensor) -> torch.Tensor:
    """Pixel MSE (in 0-1 units) of all three SPDNet outputs against the clean image (deep supervision)."""
    return sum(F.mse_loss(output / 255.0, clean) for output in outputs) / len(outputs)


def psnr(images: torch.Tensor, clean: torch.Tensor) -> float:
    mse = F.mse_loss(images.clamp(0, 1), clean).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_original_spdnet(settings: dict, coco_dir: str, coco_rain_dir: str, path: str, device: torch.device,
                          workers: int) -> dict:
    """SPDNet trained with pixel MSE on rainy -> clean crops; saved to ``path`` with its size.

    Returns PSNR on the rainy validation images before (rainy input) and after deraining.
    """
    torch.manual_seed(settings["seed"])
    spdnet = SPDNet(settings["n_feats"], settings["n_resblocks"]).to(device).train()
    dataset = build_dataset(coco_dir, coco_rain_dir, "train", None, image_size=settings["image_size"], train=True,
                            coco_ratio=0.0, rain_ratio=1.0, seed=settings["seed"], return_clean_pair=True)
    batches = _endless(_loader(dataset, settings["batch_size"], settings["seed"], workers, device), dataset)
    optimizer = torch.optim.AdamW(spdnet.parameters(), lr=settings["learning_rate"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings["seed"])

    def pixel_loss(images, targets):
        clean = torch.stack([t["clean_image"] for t in targets])
        rainy_crop, clean_crop = random_crops(images, clean, settings["crop_size"], generator)
        return deraining_loss(spdnet(rainy_crop.to(device) * 255.0), clean_crop.to(device))

    optimise(spdnet, optimizer, pixel_loss, batches, settings["steps"], 1.0, "demo SPDNet (pixel MSE)")
    spdnet.eval()
    atomic_save({"spdnet": spdnet.state_dict(), "n_feats": spdnet.n_feats, "n_resblocks": spdnet.n_resblocks,
                 "demo_settings": settings}, path)
    return deraining_quality(spdnet, coco_dir, coco_rain_dir, settings["image_size"], device)


@torch.no_grad()
def deraining_quality(spdnet: SPDNet, coco_dir: str, coco_rain_dir: str, image_size: int, device: torch.device) -> dict:
    """Mean PSNR (dB) against the clean originals on the rainy val split: rainy input vs derained."""
    dataset = build_dataset(coco_dir, coco_rain_dir, "val", None, image_size=image_size, coco_ratio=0.0,
                            rain_ratio=1.0, return_clean_pair=True)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate_fn)
    rainy_psnr, derained_psnr, batches = 0.0, 0.0, 0
    for images, targets in tqdm(loader, desc="demo SPDNet PSNR", dynamic_ncols=True, leave=False):
        clean = torch.stack([t["clean_image"] for t in targets]).to(device)
        images = images.to(device)
        rainy_psnr += psnr(images, clean)
        derained_psnr += psnr(spdnet(images * 255.0)[0] / 255.0, clean)
        batches += 1
    return {"rainy_psnr_db": rainy_psnr / batches, "derained_psnr_db": derained_psnr / batches}

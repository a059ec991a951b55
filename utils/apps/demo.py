"""The CPU demo's stand-ins for what real users download, and the demo worlds they are used on.

``Make_Demo.py --DEMO_PRETRAIN=True`` makes the stand-ins, kept in DEMO_WEIGHTS_DIR (the repository's
``demo_weights/``), on a pretraining world of their own (DEMO_PRETRAIN_SEED):

1. ``detector/``: a small RT-DETR trained from scratch on the pretraining world's clean training
   images, written with ``save_pretrained`` (fp16, to keep the file small) so that every script loads
   it through ``load_detector`` like ``PekingU/rtdetr_r18vd``;
2. ``spdnet_original.pt``: SPDNet trained with a pixel MSE loss on rainy -> clean crops (the
   official recipe's objective), standing in for the official deraining weights.

Each records its settings and its quality on the pretraining world's validation split beside it
(``demo_settings.json``, ``spdnet_original.pt.json``). ``Make_Demo.py`` (what configs/demo.py runs)
then builds a demo world (DEMO_SEED: other scenes, other rain), measures both stand-ins on it
(``demo_quality.json``) and trains the rain gate on it. A stage's settings include those of the
stages it depends on, so a changed world rebuilds the rest; a stage whose output records the same
settings is reused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from utils.apps.gate_training import train_rain_detector
from utils.runtime.checkpoint import atomic_save, atomic_write_json
from utils.training.coco_eval import load_coco
from utils.data.coco import build_dataset, collate_fn, loader_settings, non_empty
from utils.models.detector import check_small_family, load_detector, small_rtdetr_config
from utils.training.engine import LoopSettings, TrainState, detector_targets, evaluate, train_one_epoch
from utils.apps.evaluation import image_quality
from utils.apps.pipelines import GATE_FILE, build_detector_only, build_spdnet
from utils.runtime.device import choose_device, set_cpu_threads
from utils.runtime import settings as shared_settings
from utils.runtime.errors import MissingFileError, SettingError
from utils.models.spdnet import SPDNet
from utils.data.synthetic import WORLD_FILE, build_synthetic_world, world_id2label

MANIFEST = "demo_settings.json"
DEMO_GATE_DIR = "demo_gate"  # the demo's own rain gate, in a folder of DEMO_DIR that no other script writes to
QUALITY_FILE = "demo_quality.json"
MAX_NONFINITE_IN_A_ROW = 20  # a stand-in whose loss stays NaN this long is broken: stop with the reason


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


def weights_paths(weights_dir: str, family: str = "rt_detr") -> dict[str, str]:
    """Where the kept stand-ins and their records are: the detector of ``family`` (DEMO_DETECTOR_FAMILY)
    in ``detector/`` for RT-DETR, ``detector_<family>/`` for another."""
    detector = os.path.join(weights_dir, "detector" if family == "rt_detr" else f"detector_{family}")
    return {
        "detector": detector,
        "detector_manifest": os.path.join(detector, MANIFEST),
        "spdnet": os.path.join(weights_dir, "spdnet_original.pt"),
        "spdnet_manifest": os.path.join(weights_dir, "spdnet_original.pt.json"),
    }


def pretrain_command(family: str) -> str:
    """The command that makes the kept stand-ins with the detector of ``family``."""
    command = "python Make_Demo.py --DEMO_PRETRAIN=True"
    return command if family == "rt_detr" else f"{command} --DEMO_DETECTOR_FAMILY={family}"


def world_paths(demo_dir: str) -> dict[str, str]:
    """A demo world's data, gate and quality record."""
    return {
        "world": os.path.join(demo_dir, "data"), "coco_dir": os.path.join(demo_dir, "data", "coco"),
        "coco_rain_dir": os.path.join(demo_dir, "data", "coco_rain"),
        "gate": os.path.join(demo_dir, DEMO_GATE_DIR, GATE_FILE), "quality": os.path.join(demo_dir, QUALITY_FILE),
    }


def world_settings(config: dict, seed: int, num_train: int) -> dict:
    return {
        "num_train": num_train, "num_val": config["DEMO_NUM_VAL"], "image_size": config["DEMO_IMAGE_SIZE"],
        "seed": seed, "rain_presets": list(config["DEMO_RAIN_PRESETS"]), "max_objects": config["DEMO_MAX_OBJECTS"],
        "num_classes": config["DEMO_NUM_CLASSES"],
    }


def file_sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def refuse_another_world(root: str, world: dict, demo_dir: str) -> None:
    """Stop in one line rather than replace a demo world of another seed or other rain (and the results
    beside it): each world has its own DEMO_DIR. A world of the same seed and rain is reused, or rebuilt
    when another setting (its size, a renderer's version) changed."""
    built = read_manifest(os.path.join(root, WORLD_FILE))
    if built is None:
        return
    for key in ("seed", "rain_presets"):
        if built.get(key) != world[key]:
            raise SettingError(
                f"DEMO_DIR: {demo_dir} holds the demo world of {key} {built.get(key)!r}, not {world[key]!r}; give "
                "this world a folder of its own (--DEMO_DIR=..., as configs/demo_world1.py does) or delete that one")


def build_world(world: dict, root: str) -> None:
    build_synthetic_world(root, world["num_train"], world["num_val"], image_size=world["image_size"],
                          seed=world["seed"], rain_presets=tuple(world["rain_presets"]),
                          max_objects=world["max_objects"], num_classes=world["num_classes"])


def pretrain_stand_ins(config: dict) -> dict[str, str]:
    """Train the kept detector and original SPDNet on the pretraining world (each only when its
    record differs from the settings) and record their quality on its validation split."""
    check_small_family(config["DEMO_DETECTOR_FAMILY"])  # before the world is built
    start = time.perf_counter()
    world = world_settings(config, config["DEMO_PRETRAIN_SEED"], config["DEMO_PRETRAIN_NUM_TRAIN"])
    build_world(world, world_paths(config["DEMO_PRETRAIN_DIR"])["world"])
    pretrain_detector(config, world)
    pretrain_spdnet(config, world)
    print(f"kept stand-ins ready in {config['DEMO_WEIGHTS_DIR']} ({time.perf_counter() - start:.0f} s)", flush=True)
    return weights_paths(config["DEMO_WEIGHTS_DIR"], config["DEMO_DETECTOR_FAMILY"])


def pretrain_detector(config: dict, world: dict) -> None:
    """The detector stage of ``pretrain_stand_ins``; it sees clean images only, so the rain is not
    part of its settings."""
    paths = weights_paths(config["DEMO_WEIGHTS_DIR"], config["DEMO_DETECTOR_FAMILY"])
    data = world_paths(config["DEMO_PRETRAIN_DIR"])
    device = choose_device(config["DEMO_DEVICE"])
    settings = {
        "world": {key: value for key, value in world.items() if key != "rain_presets"}, "seed": world["seed"],
        "family": config["DEMO_DETECTOR_FAMILY"],
        "steps": config["DEMO_DETECTOR_STEPS"], "batch_size": config["DEMO_DETECTOR_BATCH_SIZE"],
        "learning_rate": config["DEMO_DETECTOR_LEARNING_RATE"], "base_width": config["DEMO_DETECTOR_WIDTH"],
        "d_model": config["DEMO_DETECTOR_D_MODEL"], "decoder_layers": config["DEMO_DETECTOR_DECODER_LAYERS"],
        "num_queries": config["DEMO_DETECTOR_QUERIES"], "num_denoising": config["DEMO_DETECTOR_DENOISING"],
    }
    if is_built(paths["detector_manifest"], settings, [paths["detector"]]):
        print(f"demo detector: {paths['detector']} already made with these settings", flush=True)
        return
    train_detector(settings, data["coco_dir"], paths["detector"], device, config["DEMO_WORKERS"], half=True)
    metrics = score_detector(paths["detector"], data["coco_dir"], world["image_size"], device, config["DEMO_WORKERS"])
    atomic_write_json(paths["detector_manifest"], {
        "command": pretrain_command(settings["family"]), "settings": settings,
        "pretraining_world_clean_val": {k: round(metrics[k], 4) for k in ("AP", "AP50", "AP75")},
    })
    print(f"demo detector: clean val AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}", flush=True)


def pretrain_spdnet(config: dict, world: dict) -> None:
    """The original-SPDNet stage of ``pretrain_stand_ins``."""
    paths, data = weights_paths(config["DEMO_WEIGHTS_DIR"]), world_paths(config["DEMO_PRETRAIN_DIR"])
    device = choose_device(config["DEMO_DEVICE"])
    settings = {
        "world": world, "seed": world["seed"], "n_feats": config["DEMO_SPDNET_N_FEATS"],
        "n_resblocks": config["DEMO_SPDNET_N_RESBLOCKS"], "steps": config["DEMO_SPDNET_STEPS"],
        "batch_size": config["DEMO_SPDNET_BATCH_SIZE"], "crop_size": config["DEMO_SPDNET_CROP"],
        "learning_rate": config["DEMO_SPDNET_LEARNING_RATE"], "loss": "mse",
    }
    if is_built(paths["spdnet_manifest"], settings, [paths["spdnet"]]):
        print(f"demo original SPDNet: {paths['spdnet']} already made with these settings", flush=True)
        return
    train_original_spdnet(settings, data["coco_dir"], data["coco_rain_dir"], paths["spdnet"], device,
                          config["DEMO_WORKERS"])
    quality = deraining_quality(build_spdnet(paths["spdnet"], 32, 3), data["coco_dir"], data["coco_rain_dir"],
                                world["image_size"], device)
    atomic_write_json(paths["spdnet_manifest"], {
        "command": "python Make_Demo.py --DEMO_PRETRAIN=True", "settings": settings,
        "pretraining_world_rainy_val": quality,
    })
    print(f"demo original SPDNet: {describe_quality(quality)}", flush=True)


def prepare_demo(config: dict) -> dict[str, str]:
    """Make_Demo.py's job: with DEMO_PRETRAIN, make the kept stand-ins; otherwise build (or reuse)
    the demo world, measure the stand-ins on it and train (or reuse) its rain gate."""
    if config["DEMO_PRETRAIN"]:
        return pretrain_stand_ins(config)
    start = time.perf_counter()
    set_cpu_threads(config["DEMO_CPU_THREADS"])
    paths = build_demo(config)
    train_demo_gate(config, paths)
    print(f"demo world ready in {config['DEMO_DIR']} ({time.perf_counter() - start:.0f} s)", flush=True)
    return paths


def gate_settings(config: dict, paths: dict[str, str]) -> dict:
    """Every setting of Training_Rain_Detector.py for the demo's gate: a small CNN on the whole world
    (configs/demo.py with configs/demo_rain_gate.py gives that script the same recipe)."""
    size, workers = config["DEMO_IMAGE_SIZE"], config["DEMO_WORKERS"]
    return {
        "COCO_DIR": paths["coco_dir"], "COCO_RAIN_DIR": paths["coco_rain_dir"], "GATE_PERCENT_DATASET": 100.0,
        "GATE_VAL_PERCENT": 100.0, "GATE_IMAGE_SIZE": size, "HOLDOUT_FAMILY": None, "EPOCH_VARIANTS": False,
        "RANDOM_RAIN": 0.0, "LIBRARY_WEATHER": 0.0,
        "AUGMENT_BLUR": 0.0, "AUGMENT_JPEG": 0.0, "AUGMENT_JITTER": 0.0, "AUGMENT_NOISE": 0.0,
        "ARCHITECTURE": "small_cnn", "IMAGENET_WEIGHTS": None, "INPUT_SIZE": size,
        "GATE_NUM_EPOCHS": config["DEMO_GATE_EPOCHS"], "GATE_BATCH_SIZE": 32, "GATE_LEARNING_RATE": 1e-3,
        "DEVICE": config["DEMO_DEVICE"], "CPU_THREADS": None, "DATALOADER_WORKERS": workers,
        "SEED": config["DEMO_SEED"], "OUTPUT_DIR": os.path.dirname(paths["gate"]), "RESUME": False,
        "LOG_EVERY_STEPS": 10,
        "KEEP_CHECKPOINTS": shared_settings.KEEP_CHECKPOINTS,
        "AUTO_MICRO_BATCH": shared_settings.AUTO_MICRO_BATCH,
    }


def train_demo_gate(config: dict, paths: dict[str, str]) -> None:
    """The demo world's rain gate (utils.apps.gate_training.train_rain_detector), unless its record
    says it was made with the same world, seed and epochs."""
    world = world_settings(config, config["DEMO_SEED"], config["DEMO_NUM_TRAIN"])
    gate = {"world": world, "seed": config["DEMO_SEED"], "epochs": config["DEMO_GATE_EPOCHS"]}
    if is_built(paths["gate"] + ".json", gate, [paths["gate"]]):
        if read_manifest(paths["gate"] + ".json").get("sha256") == file_sha256(paths["gate"]):
            print(f"demo rain gate: reused {paths['gate']}", flush=True)
            return
        print(f"demo rain gate: {paths['gate']} is not the file this script recorded (written by another run?): "
              "training the demo's own again", flush=True)
    result = train_rain_detector(gate_settings(config, paths))
    atomic_write_json(paths["gate"] + ".json", {
        "settings": gate, "sha256": file_sha256(paths["gate"]),
        "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))},
    })


def build_demo(config: dict) -> dict[str, str]:
    """Build (or reuse) the demo world and measure the kept stand-ins on it."""
    device = choose_device(config["DEMO_DEVICE"])
    paths = {**weights_paths(config["DEMO_WEIGHTS_DIR"], config["DEMO_DETECTOR_FAMILY"]),
             **world_paths(config["DEMO_DIR"])}
    kept = {name: read_manifest(paths[f"{name}_manifest"]) for name in ("detector", "spdnet")}
    for name, manifest in kept.items():
        if manifest is None or not os.path.exists(paths[name]):
            raise MissingFileError(
                f"DEMO_WEIGHTS_DIR: {paths[name]!r} or its record is missing; make the demo's stand-ins with "
                f"`{pretrain_command(config['DEMO_DETECTOR_FAMILY'])}` (or restore demo_weights/ from git)"
            )
    world = world_settings(config, config["DEMO_SEED"], config["DEMO_NUM_TRAIN"])
    for name in ("detector", "spdnet"):
        made_on = kept[name]["settings"]["world"]
        for key in ("image_size", "num_classes"):
            if made_on[key] != world[key]:
                raise SettingError(f"DEMO_{key.upper()} is {world[key]} but {paths[name]} was made for {made_on[key]}")
    refuse_another_world(paths["world"], world, config["DEMO_DIR"])
    os.makedirs(config["DEMO_DIR"], exist_ok=True)
    build_world(world, paths["world"])

    settings = {"world": world, "detector": kept["detector"]["settings"], "spdnet": kept["spdnet"]["settings"]}
    if is_built(paths["quality"], settings, []):
        quality = read_manifest(paths["quality"])
    else:
        detector = score_detector(paths["detector"], paths["coco_dir"], world["image_size"], device,
                                  config["DEMO_WORKERS"])
        spdnet = build_spdnet(paths["spdnet"], 32, 3)
        quality = {
            "settings": settings,
            "detector_clean_val": {k: round(detector[k], 4) for k in ("AP", "AP50", "AP75")},
            "spdnet_rainy_val": deraining_quality(spdnet, paths["coco_dir"], paths["coco_rain_dir"],
                                                  world["image_size"], device),
        }
        atomic_write_json(paths["quality"], quality)
    detector = quality["detector_clean_val"]
    print(f"demo detector {paths['detector']}: clean val AP {detector['AP']:.3f}, AP50 {detector['AP50']:.3f} "
          f"on this world", flush=True)
    print(f"demo original SPDNet {paths['spdnet']}: {describe_quality(quality['spdnet_rainy_val'])} on this world",
          flush=True)
    return paths


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
        yield from non_empty(loader)
        epoch += 1


def optimise(model, optimizer, loss_of_batch, batches, steps: int, clip_norm: float, device: torch.device,
             description: str) -> None:
    """``steps`` AdamW steps on ``loss_of_batch(images, targets)`` with a one-cycle schedule and
    gradient clipping, one batch per step, through the training loop every trainer shares."""
    max_lr = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    settings = LoopSettings(accumulation_steps=1, clip_grad_norm=clip_norm, precision="fp32",
                            max_nonfinite_in_a_row=MAX_NONFINITE_IN_A_ROW, log_every_steps=20)
    train_one_epoch(model, lambda images, targets: (loss_of_batch(images, targets), {}), optimizer, scheduler,
                    itertools.islice(batches, steps), TrainState(), settings, micro_batches_in_epoch=steps,
                    device=device, description=description)


def train_detector(settings: dict, coco_dir: str, output_dir: str, device: torch.device, workers: int,
                   half: bool = False) -> None:
    """Train a small RT-DETR (or RT-DETRv2: ``settings["family"]``) on the clean training split and
    save it to ``output_dir`` (in fp16 with ``half``: a kept file half the size; ``load_detector``
    runs it in fp32).

    ``settings`` holds the world's settings (its ``num_classes`` give the labels, its ``image_size``
    the input), the family, seed, steps, batch_size, learning_rate and the model's sizes (base_width, d_model,
    decoder_layers, num_queries, num_denoising). Train mode (denoising queries on), AdamW with a
    one-cycle schedule and gradient clipping at 0.1, as RT-DETR's own recipe.
    """
    torch.manual_seed(settings["seed"])
    id2label = world_id2label(settings["world"]["num_classes"])
    config = small_rtdetr_config(
        id2label, base_width=settings["base_width"], d_model=settings["d_model"],
        decoder_layers=settings["decoder_layers"], num_queries=settings["num_queries"],
        num_denoising=settings["num_denoising"], family=settings["family"],
    )
    detector = load_detector(config).to(device)
    for parameter in detector.parameters():
        parameter.requires_grad_(True)
    detector.train()
    dataset = build_dataset(coco_dir, None, "train", id2label, image_size=settings["world"]["image_size"], train=True,
                            coco_ratio=1.0, rain_ratio=0.0, seed=settings["seed"])
    batches = _endless(_loader(dataset, settings["batch_size"], settings["seed"], workers, device), dataset)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=settings["learning_rate"], weight_decay=1e-4)

    def detection_loss(images, targets):
        return detector(pixel_values=images.to(device), labels=detector_targets(targets, device)).loss

    optimise(detector, optimizer, detection_loss, batches, settings["steps"], 0.1, device,
             "demo detector (clean images)")
    staging = output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (detector.eval().half() if half else detector.eval()).save_pretrained(staging)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)


def score_detector(detector_dir: str, coco_dir: str, image_size: int, device: torch.device, workers: int) -> dict:
    """Clean-val COCO metrics of a saved detector, loaded back as every script loads it."""
    detector = load_detector(detector_dir).to(device)
    dataset = build_dataset(coco_dir, None, "val", detector.config.id2label, image_size=image_size,
                            coco_ratio=1.0, rain_ratio=0.0)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate_fn, **loader_settings(workers, device))
    coco_gt = load_coco(dataset.annotation_file)
    model = build_detector_only(detector).to(device)
    with torch.no_grad():
        return evaluate(model, loader, coco_gt, dataset.label_to_category_id, device=device, derain=False,
                        description="demo detector clean val")


def random_crops(images: torch.Tensor, clean: torch.Tensor, size: int, generator: torch.Generator):
    """The same random ``size`` x ``size`` window of each rainy / clean pair: two (B, 3, size, size)."""
    batch, _, height, width = images.shape
    tops = torch.randint(0, height - size + 1, (batch,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,), generator=generator).tolist()

    def pick(tensor):
        return torch.stack([t[:, y : y + size, x : x + size] for t, y, x in zip(tensor, tops, lefts)])

    return pick(images), pick(clean)


def deraining_loss(outputs: Sequence[torch.Tensor], clean: torch.Tensor) -> torch.Tensor:
    """Pixel MSE (in 0-1 units) of all three SPDNet outputs against the clean image (deep supervision),
    the official recipe's loss."""
    return sum(F.mse_loss(output / 255.0, clean) for output in outputs) / len(outputs)


def train_original_spdnet(settings: dict, coco_dir: str, coco_rain_dir: str, path: str, device: torch.device,
                          workers: int) -> None:
    """SPDNet trained with a pixel MSE loss on rainy -> clean crops (or whole images); saved to ``path``
    with its size and settings."""
    torch.manual_seed(settings["seed"])
    spdnet = SPDNet(settings["n_feats"], settings["n_resblocks"]).to(device).train()
    dataset = build_dataset(coco_dir, coco_rain_dir, "train", None, image_size=settings["world"]["image_size"],
                            train=True, coco_ratio=0.0, rain_ratio=1.0, seed=settings["seed"], return_clean_pair=True)
    batches = _endless(_loader(dataset, settings["batch_size"], settings["seed"], workers, device), dataset)
    optimizer = torch.optim.AdamW(spdnet.parameters(), lr=settings["learning_rate"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings["seed"])

    def pixel_loss(images, targets):
        clean = torch.stack([t["clean_image"] for t in targets])
        if settings["crop_size"]:
            images, clean = random_crops(images, clean, settings["crop_size"], generator)
        return deraining_loss(spdnet(images.to(device) * 255.0), clean.to(device))

    optimise(spdnet, optimizer, pixel_loss, batches, settings["steps"], 1.0, device, "demo SPDNet (pixel MSE)")
    atomic_save({"spdnet": spdnet.eval().state_dict(), "n_feats": spdnet.n_feats, "n_resblocks": spdnet.n_resblocks,
                 "demo_settings": settings}, path)


def deraining_quality(spdnet: SPDNet, coco_dir: str, coco_rain_dir: str, image_size: int, device: torch.device) -> dict:
    """PSNR (dB) and SSIM of the rainy val input and of SPDNet's output, against the clean originals."""
    quality = image_quality({"derained": spdnet}, coco_dir, coco_rain_dir, image_size, device)
    return {f"{name}_{metric}": value for name in ("rainy", "derained") for metric, value in quality[name].items()}


def describe_quality(quality: dict) -> str:
    gain = quality["derained_psnr_db"] - quality["rainy_psnr_db"]
    return (f"rainy val PSNR {quality['rainy_psnr_db']:.2f} -> {quality['derained_psnr_db']:.2f} dB ({gain:+.2f} dB), "
            f"SSIM {quality['rainy_ssim']:.3f} -> {quality['derained_ssim']:.3f}")

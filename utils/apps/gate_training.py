"""Training the rain gate (Training_Rain_Detector.py and the demo): data, the loop, threshold and
calibration chosen on val after every epoch, the best epoch saved."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from utils.apps.pipelines import GATE_FILE
from utils.data.coco import build_dataset, collate_fn, loader_settings, non_empty, rain_variant_dirs
from utils.data.gate_data import GateTrainingSet
from utils.data.library_weather import library_weather
from utils.data.rain import FAMILIES, families_except, split_by_family
from utils.models.rain_gate import RainDetector
from utils.runtime.checkpoint import atomic_save, load_checkpoint, restore_rng_states, rng_states, seed_everything
from utils.runtime.config import check_fractions
from utils.runtime.device import choose_device
from utils.runtime.errors import DataError, SettingError
from utils.runtime.signals import StopRequested
from utils.training.engine import LoopSettings, Trainer, TrainState, train_one_epoch
from utils.training.gate_metrics import choose_threshold, classification_metrics, fit_temperature


GATE_CHECKPOINT_FILE = "rain_detector_checkpoint.pt"  # everything a resumed gate training needs
GATE_LOG_NAME = "rain_detector_log.jsonl"  # one JSON line per LOG_EVERY_STEPS steps and per epoch
MAX_NONFINITE_IN_A_ROW = 20  # the gate's loss is a plain BCE: a run of NaNs means a broken input or rate


@dataclass
class GateData:
    train: DataLoader
    val: DataLoader
    held_out: DataLoader | None  # HOLDOUT_FAMILY's variants of COCO_RAIN_DIR, with the clean val images
    generator: torch.Generator  # the training loader's shuffle: its state at an epoch's start replays the epoch


def gate_rain_dirs(config: dict, split: str) -> tuple[list[str] | str, list[str]]:
    """COCO_RAIN_DIR's variants for the gate, and those of HOLDOUT_FAMILY (scored apart)."""
    holdout = config["HOLDOUT_FAMILY"]
    if holdout is None:
        return config["COCO_RAIN_DIR"], []
    kept, held_out = split_by_family(rain_variant_dirs(config["COCO_RAIN_DIR"], split), holdout)
    if not kept:
        raise DataError(f"HOLDOUT_FAMILY={holdout!r} leaves no rain variant of "
                         f"COCO_RAIN_DIR={config['COCO_RAIN_DIR']!r} to train on")
    return kept, held_out


def gate_loader(config: dict, split: str, train: bool, coco_rain_dir, device: torch.device,
                id2label: dict | None = None) -> DataLoader:
    """Half clean, half rainy images of ``split`` (diversified for training: ``GateTrainingSet``);
    ``id2label``: the detector's, when the labels are used (the utility gate), else None."""
    setting = "GATE_PERCENT_DATASET" if train else "GATE_VAL_PERCENT"
    dataset = build_dataset(
        config["COCO_DIR"], coco_rain_dir, split, id2label, image_size=config["GATE_IMAGE_SIZE"], train=train,
        percent=config[setting], coco_ratio=0.5, rain_ratio=0.5, seed=config["SEED"],
        return_clean_pair=train and config["RANDOM_RAIN"] > 0,
    )
    if len(dataset) == 0:
        raise DataError(f"{setting}={config[setting]} leaves no {split} image of COCO_DIR={config['COCO_DIR']!r}: "
                         f"raise {setting}")
    diversity = {"blur": config["AUGMENT_BLUR"], "jpeg": config["AUGMENT_JPEG"], "jitter": config["AUGMENT_JITTER"],
                 "noise": config["AUGMENT_NOISE"]}
    library = config["LIBRARY_WEATHER"]
    if train and (config["RANDOM_RAIN"] > 0 or library > 0 or any(value > 0 for value in diversity.values())):
        dataset = GateTrainingSet(dataset, families_except(config["HOLDOUT_FAMILY"]), config["RANDOM_RAIN"],
                                  **diversity, weather=library_weather(library))
    return DataLoader(
        dataset, batch_size=config["GATE_BATCH_SIZE"], shuffle=train, drop_last=train, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(config["SEED"]),
        **loader_settings(config["DATALOADER_WORKERS"], device),
    )


def build_gate_data(config: dict, device: torch.device, id2label: dict | None = None) -> GateData:
    """The gate's loaders (``gate_loader``) with HOLDOUT_FAMILY's variants kept apart."""
    holdout = config["HOLDOUT_FAMILY"]
    if holdout is not None and holdout not in FAMILIES:
        raise SettingError(f"HOLDOUT_FAMILY must be one of {FAMILIES} or None, got {holdout!r}")
    train_rain, _ = gate_rain_dirs(config, "train")
    val_rain, held_out_rain = gate_rain_dirs(config, "val")
    train = gate_loader(config, "train", True, train_rain, device, id2label)
    val = gate_loader(config, "val", False, val_rain, device, id2label)
    held_out = gate_loader(config, "val", False, held_out_rain, device, id2label) if held_out_rain else None
    if holdout is not None and held_out is None:
        print(f"COCO_RAIN_DIR has no {holdout} variant: held-out scoring is left to Eval_conditional.py "
              "(HOLDOUT_RAIN_DIR)", flush=True)
    return GateData(train, val, held_out, train.generator)


def rain_labels(targets, device: torch.device) -> torch.Tensor:
    return torch.tensor([float(t["is_rainy"]) for t in targets], device=device)


def gate_loss(model: RainDetector, device: torch.device):
    """The loss of one batch: binary cross-entropy of the gate's logits against "is rainy"."""
    def loss_of_batch(images, targets):
        logits = model(images.to(device, non_blocking=True))
        return F.binary_cross_entropy_with_logits(logits, rain_labels(targets, device)), {}

    return loss_of_batch


@torch.no_grad()
def gate_logits(model: RainDetector, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) logits and (N,) 0/1 rain labels of every image of ``loader``."""
    model.eval()
    logits, truth = [], []
    for images, targets in non_empty(loader):
        logits.append(model(images.to(device)).float().cpu())
        truth.append(rain_labels(targets, device).cpu())
    return torch.cat(logits), torch.cat(truth)


def threshold_metrics(logits: torch.Tensor, truth: torch.Tensor, epoch: int) -> dict:
    """logits (N,), 0/1 truth (N,) -> the threshold with the best accuracy, the calibration temperature,
    and the classification metrics at that threshold."""
    scores = torch.sigmoid(logits)
    threshold = choose_threshold(scores, truth)
    return dict(classification_metrics(scores, truth, threshold), threshold=threshold,
                temperature=fit_temperature(logits, truth), epoch=epoch)


def score_gate(model: RainDetector, data: GateData, device: torch.device, epoch: int, holdout: str | None) -> dict:
    """The epoch's threshold (best val accuracy), calibration temperature and metrics, printed."""
    metrics = threshold_metrics(*gate_logits(model, data.val, device), epoch)
    threshold = metrics["threshold"]
    print(f"epoch {epoch}: val accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
          f"recall {metrics['recall']:.4f} at threshold {threshold:.3f} (calibration temperature "
          f"{metrics['temperature']:.3g})", flush=True)
    if data.held_out is not None:
        held_logits, held_truth = gate_logits(model, data.held_out, device)
        metrics["held_out"] = classification_metrics(torch.sigmoid(held_logits), held_truth, threshold)
        held = metrics["held_out"]
        print(f"epoch {epoch}: held-out {holdout} rain (with the clean val images): accuracy {held['accuracy']:.4f}, "
              f"precision {held['precision']:.4f}, recall {held['recall']:.4f}", flush=True)
    return metrics


class GateRun:
    """The gate's training run: model, optimizer, schedule, where it stands (``state``, the best epoch
    so far) and the loader's shuffle at the epoch's start, all saved in one checkpoint for RESUME.
    Another gate (utils/apps/utility_gate.py) changes its files, ``score`` and ``saved``."""

    gate_file, checkpoint_file = GATE_FILE, GATE_CHECKPOINT_FILE

    def __init__(self, config: dict, data: GateData, device: torch.device, detector=None):
        self.config, self.data, self.device = config, data, device
        self.model = RainDetector(config["ARCHITECTURE"], config["INPUT_SIZE"],
                                  imagenet_weights=config["IMAGENET_WEIGHTS"], detector=detector).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config["GATE_LEARNING_RATE"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config["GATE_NUM_EPOCHS"] * len(data.train))
        self.state, self.best, self.epoch_shuffle = TrainState(), None, data.generator.get_state()
        self.gate_path = os.path.join(config["OUTPUT_DIR"], self.gate_file)
        self.checkpoint_path = os.path.join(config["OUTPUT_DIR"], self.checkpoint_file)

    def checkpoint(self, state: TrainState) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "state": state.to_dict(), "best": self.best,
                "epoch_shuffle": self.epoch_shuffle, "rng": rng_states(), "config": dict(self.config)}

    def resume(self) -> None:
        checkpoint, path = load_checkpoint(self.checkpoint_path, self.config["KEEP_CHECKPOINTS"], "RESUME",
                                           ("model", "optimizer"))
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.state, self.best = TrainState(**checkpoint["state"]), checkpoint["best"]
        self.epoch_shuffle = checkpoint["epoch_shuffle"]
        restore_rng_states(checkpoint["rng"])
        print(f"resumed from {path}: epoch {self.state.epoch + 1}, step {self.state.step}", flush=True)

    def batches(self):
        """This epoch's batches from where the state stands (the shuffle replayed from the epoch's start)."""
        self.data.generator.set_state(self.epoch_shuffle)
        return itertools.islice(iter(self.data.train), self.state.micro_batches_done, None)

    def score(self, epoch: int) -> dict:
        """The epoch's val metrics with its threshold and temperature (``score_gate``)."""
        return score_gate(self.model, self.data, self.device, epoch, self.config["HOLDOUT_FAMILY"])

    def saved(self, metrics: dict, epoch: int) -> dict:
        """What the gate file holds: ``RainDetector.checkpoint`` and what the epoch scored."""
        val_metrics = {k: v for k, v in metrics.items() if k not in ("threshold", "temperature", "epoch", "held_out")}
        return self.model.checkpoint(val_metrics=val_metrics, held_out_metrics=metrics.get("held_out", {}),
                                     holdout_family=self.config["HOLDOUT_FAMILY"], config=dict(self.config),
                                     epoch=epoch)

    def end_epoch(self) -> dict:
        """Score val, keep the most accurate epoch in the gate file, move on to the next epoch;
        returns the epoch's metrics."""
        epoch = self.state.epoch + 1
        metrics = self.score(epoch)
        if self.best is None or metrics["accuracy"] > self.best["accuracy"]:
            self.best = metrics
            self.model.threshold, self.model.temperature = metrics["threshold"], metrics["temperature"]
            atomic_save(self.saved(metrics, epoch), self.gate_path)
        self.state.epoch += 1
        self.state.micro_batches_done = 0
        self.epoch_shuffle = self.data.generator.get_state()
        return metrics


def train_rain_detector(config: dict) -> dict:
    """Train the gate with Training_Rain_Detector.py's settings (``config``: every one of them), choose
    its threshold and calibration on val after every epoch, keep the most accurate epoch in
    OUTPUT_DIR/rain_detector.pt. Training_Rain_Detector.py and the demo both call this. Ctrl-C saves
    OUTPUT_DIR/rain_detector_checkpoint.pt, which RESUME continues bit for bit.

    Returns the best epoch's val metrics with its threshold, temperature and epoch (and ``held_out``),
    plus ``stopped`` when a signal ended the run early.
    """
    check_fractions(config, ("RANDOM_RAIN", "LIBRARY_WEATHER"))
    device = choose_device(config["DEVICE"])
    seed_everything(config["SEED"])
    os.makedirs(config["OUTPUT_DIR"], exist_ok=True)
    run = GateRun(config, build_gate_data(config, device), device)
    return fit_gate(run, gate_loss(run.model, device), GATE_LOG_NAME, "rain detector")


def fit_gate(run: GateRun, loss_of_batch, log_name: str, what: str) -> dict:
    """The gates' epoch loop (``train_one_epoch``, an ``engine.Trainer`` for the log and checkpoints):
    resume when RESUME, train GATE_NUM_EPOCHS epochs minimising ``loss_of_batch``, ``run.end_epoch``
    after each, log to OUTPUT_DIR/``log_name``.
    Returns the best epoch's metrics, plus ``stopped`` when a signal ended the run early."""
    config, device = run.config, run.device
    if config["RESUME"]:
        run.resume()
    trainer = Trainer(log_path=os.path.join(config["OUTPUT_DIR"], log_name), checkpoint_path=run.checkpoint_path,
                      make_checkpoint=run.checkpoint, fresh_log=not config["RESUME"],
                      keep_checkpoints=config["KEEP_CHECKPOINTS"])
    settings = LoopSettings(1, None, "fp32", MAX_NONFINITE_IN_A_ROW, config["LOG_EVERY_STEPS"],
                            auto_micro_batch=config["AUTO_MICRO_BATCH"])
    stop = StopRequested().install()
    try:
        while run.state.epoch < config["GATE_NUM_EPOCHS"]:
            if config.get("EPOCH_VARIANTS", False):
                run.data.train.dataset.set_epoch(run.state.epoch)
            with trainer.saving_on_error():
                result = train_one_epoch(run.model, loss_of_batch, run.optimizer, run.scheduler, run.batches(),
                                         run.state, settings, micro_batches_in_epoch=len(run.data.train),
                                         device=device, on_log=trainer.log, after_step=trainer.after_step,
                                         should_stop=stop, description=f"{what} epoch {run.state.epoch + 1}")
            if result["stopped"]:
                trainer.save(run.state)
                print(f"stopped at step {run.state.step}; continue with --RESUME=True ({run.checkpoint_path})",
                      flush=True)
                return dict(run.best or {}, stopped=True)
            metrics = run.end_epoch()
            trainer.log({"type": "epoch", "epoch": run.state.epoch, "step": run.state.step,
                         "train_loss": result["loss"],
                         **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
            trainer.save(run.state)
    finally:
        stop.uninstall()
    print(f"saved {run.gate_path} (epoch {run.best['epoch']}, accuracy {run.best['accuracy']:.4f}, "
          f"threshold {run.best['threshold']:.3f})")
    return run.best

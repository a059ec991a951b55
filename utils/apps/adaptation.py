"""The pieces of Training_SPDNet_Adaptation.py's ``main``: factories, resume, and the epoch loop.

Under torchrun (utils/runtime/distributed.py) rank 0 alone logs and writes files.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from utils.apps.pipelines import ADAPTED_FILE, CHECKPOINT_FILE, adapted_weights
from utils.apps.plots import plot_training_curves
from utils.data.coco import build_dataset, collate_fn, loader_settings, rain_variant_dirs
from utils.data.rain import FAMILIES, families_except, split_by_family
from utils.data.library_weather import library_weather
from utils.data.random_rain import RandomRainSet
from utils.models.detector import state_dict_sha256
from utils.models.integrated_model import IntegratedModel, check_image_size
from utils.runtime.checkpoint import atomic_save, load_checkpoint, restore_rng_states, rng_states, seed_everything
from utils.runtime.config import ConfigError, check_fractions
from utils.runtime.device import (check_compile, check_precision, choose_device, compile_spdnet, enable_fast_cuda_math,
                                  resolve_precision, warm_up_compiled)
from utils.runtime.signals import StopRequested  # noqa: F401  (the script installs it)
from utils.runtime.distributed import (ResumableSampler, ShardSampler, all_gather_objects, destroy_distributed,
                                       init_distributed)
from utils.runtime.errors import DataError, SettingError, UserError
from utils.runtime.memory import part_size
from utils.training.engine import (LoopSettings, Trainer, TrainState, clean_pairs, detector_targets, evaluate,
                                   train_one_epoch)
from utils.training.objectives import LOSS_TERMS, Objective, adaptation_loss

LOG_NAME = "training_log.jsonl"
PLOT_NAME = "training_curves.png"


@dataclass
class Run:
    """Where and how this run executes, resolved once from the settings (which are never rewritten)."""

    device: torch.device
    rank: int
    world_size: int
    output_dir: str
    precision: str  # PRECISION resolved for the device ("auto" -> "bf16" or "fp32")
    objective: Objective  # the *_LOSS_WEIGHT settings
    compile: str = "off"  # COMPILE as it runs ("off" where the compiler cannot)

    def resolved(self, config: dict) -> dict:
        """The settings as this run applies them: what checkpoints and weights files record."""
        return dict(config, PRECISION=self.precision, COMPILE=self.compile)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)


def objective_of(config: dict) -> Objective:
    return Objective.from_weights(config["DETECTION_LOSS_WEIGHT"], config["FEATURE_LOSS_WEIGHT"],
                                  config["PIXEL_LOSS_WEIGHT"])


def check_config(config: dict) -> None:
    """Settings that would fail hours in are refused now, with the reason."""
    check_precision(config["PRECISION"], config["FP16"])
    check_compile(config["COMPILE"])
    objective_of(config)
    check_image_size(config["IMAGE_SIZE"])
    for key in ("BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS", "NUM_EPOCHS", "MAX_NONFINITE_IN_A_ROW", "LOG_EVERY_STEPS",
                "KEEP_CHECKPOINTS"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise SettingError(f"{key} must be a positive integer, got {config[key]!r}")
    for key in ("PERCENT_DATASET", "VAL_PERCENT"):
        if not 0 < config[key] <= 100:
            raise ConfigError(f"{key} must be in (0, 100] (fractions such as 0.5 are fine), got {config[key]}")
    if config["COCO_RATIO"] < 0 or config["RAIN_RATIO"] < 0 or config["COCO_RATIO"] + config["RAIN_RATIO"] <= 0:
        raise SettingError(
            f"COCO_RATIO and RAIN_RATIO must be >= 0 with a positive sum, got {config['COCO_RATIO']} and "
            f"{config['RAIN_RATIO']}"
        )
    if config["HOLDOUT_FAMILY"] is not None and config["HOLDOUT_FAMILY"] not in FAMILIES:
        raise ConfigError(f"HOLDOUT_FAMILY must be one of {FAMILIES} or None, got {config['HOLDOUT_FAMILY']!r}")
    check_fractions(config, ("RANDOM_RAIN", "LIBRARY_WEATHER"))
    if config["LIBRARY_WEATHER"] > 0 and config["COCO_RATIO"] <= 0:
        raise ConfigError("LIBRARY_WEATHER shows weather on the clean training images: it needs COCO_RATIO > 0")


def training_rain_dirs(config: dict):
    """COCO_RAIN_DIR for training: as configured, or without HOLDOUT_FAMILY's variants (a list of the
    others). Refused when no rainy image would be left to train on."""
    holdout = config["HOLDOUT_FAMILY"]
    if holdout is None or config["RAIN_RATIO"] == 0:
        return config["COCO_RAIN_DIR"]
    kept, _ = split_by_family(rain_variant_dirs(config["COCO_RAIN_DIR"], "train"), holdout)
    if not kept and config["RANDOM_RAIN"] < 1:
        fix = ("nothing rainy to train on" if config["RANDOM_RAIN"] == 0 else
               f"the rainy images RANDOM_RAIN={config['RANDOM_RAIN']:g} leaves have no rendered rain to show")
        raise ConfigError(f"HOLDOUT_FAMILY={holdout!r} leaves no rain variant of COCO_RAIN_DIR="
                          f"{config['COCO_RAIN_DIR']!r}: {fix} (RANDOM_RAIN=1.0 renders every rainy image on the fly)")
    return kept


def validation_dataset(config: dict, id2label: dict):
    """The rainy validation split the best epoch is picked on: COCO_RAIN_DIR's val variants, without
    HOLDOUT_FAMILY's (the held-out family must not choose the weights either). When the held-out
    family is all COCO_RAIN_DIR holds, the clean val originals with rain of the other families
    rendered on the fly (RandomRainSet, every image rainy; the same rain every epoch, per SEED)."""
    holdout, rain_dirs = config["HOLDOUT_FAMILY"], config["COCO_RAIN_DIR"]
    kept = split_by_family(rain_variant_dirs(rain_dirs, "val"), holdout)[0] if holdout is not None else None
    fresh = kept == []
    dataset = build_dataset(
        config["COCO_DIR"], kept or rain_dirs, "val", id2label, image_size=config["IMAGE_SIZE"], train=False,
        percent=config["VAL_PERCENT"], coco_ratio=0.0, rain_ratio=1.0, seed=config["SEED"], return_clean_pair=fresh,
    )
    return RandomRainSet(dataset, families_except(holdout), 1.0, clean_pair=False) if fresh else dataset


def setup_run(config: dict) -> Run:
    """Device, distributed process group (under torchrun), seeds and the output directory."""
    device, rank, world_size = init_distributed(choose_device(config["DEVICE"]))
    enable_fast_cuda_math(device)
    seed_everything(config["SEED"])
    os.makedirs(config["OUTPUT_DIR"], exist_ok=True)
    # PRECISION="auto" becomes what runs on this device; checkpoints record the resolved value.
    precision, reason = resolve_precision(config["PRECISION"], device)
    if rank == 0:
        print(f"PRECISION={config['PRECISION']!r} -> {precision} ({reason})", flush=True)
    return Run(device=device, rank=rank, world_size=world_size, output_dir=config["OUTPUT_DIR"], precision=precision,
               objective=objective_of(config))


def compile_for_training(config: dict, model: IntegratedModel, run: Run) -> None:
    """COMPILE: SPDNet compiled, its first forward and backward at the training shape done now and
    timed apart from training (or eager, said in one line, where the compiler cannot run)."""
    mode = compile_spdnet(model.spdnet, config["COMPILE"], run.device)
    shape = (config["BATCH_SIZE"], 3, config["IMAGE_SIZE"], config["IMAGE_SIZE"])
    seconds = warm_up_compiled(model, mode, shape, run.precision, run.device)
    run.compile = mode if seconds is not None else "off"
    if seconds is not None and run.is_main:
        print(f"COMPILE={mode!r}: SPDNet compiled for {shape} in {seconds:.1f} s (first forward and backward)",
              flush=True)


def teardown(run: Run) -> None:
    destroy_distributed()


@dataclass
class TrainingData:
    train_dataset: object
    train_sampler: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader
    val_annotation_file: str
    label_to_category_id: dict
    micro_batches_per_epoch: int
    steps_per_epoch: int


def build_data(config: dict, id2label: dict, run: Run) -> TrainingData:
    """The training subset (rainy and/or clean; HOLDOUT_FAMILY's variants dropped, RANDOM_RAIN of the
    rainy images rendered on the fly) and the rainy validation split (``validation_dataset``), with
    their loaders."""
    clean_pair = run.objective.needs_clean_pair
    train_dataset = build_dataset(
        config["COCO_DIR"], training_rain_dirs(config), "train", id2label, image_size=config["IMAGE_SIZE"],
        train=True, percent=config["PERCENT_DATASET"], coco_ratio=config["COCO_RATIO"],
        rain_ratio=config["RAIN_RATIO"], seed=config["SEED"],
        # clean originals must exist (checked here): the objective's pairs, on-the-fly rain's source
        return_clean_pair=clean_pair or config["RANDOM_RAIN"] > 0,
    )
    if config["RANDOM_RAIN"] > 0 or config["LIBRARY_WEATHER"] > 0:
        train_dataset = RandomRainSet(train_dataset, families_except(config["HOLDOUT_FAMILY"]), config["RANDOM_RAIN"],
                                      clean_pair=clean_pair, weather=library_weather(config["LIBRARY_WEATHER"]))
    val_dataset = validation_dataset(config, id2label)
    if len(train_dataset) < config["BATCH_SIZE"] * run.world_size:
        raise DataError(
            f"the training subset has {len(train_dataset)} images, fewer than BATCH_SIZE x GPUs = "
            f"{config['BATCH_SIZE'] * run.world_size}: raise PERCENT_DATASET"
        )
    settings = loader_settings(config["DATALOADER_WORKERS"], run.device)
    train_sampler = ResumableSampler(train_dataset, run.world_size, run.rank, config["SEED"])
    train_loader = DataLoader(
        train_dataset, batch_size=config["BATCH_SIZE"], sampler=train_sampler, drop_last=True,
        collate_fn=collate_fn, **settings,
    )
    val_loader = DataLoader(
        val_dataset, batch_size=config["BATCH_SIZE"], sampler=ShardSampler(val_dataset, run.world_size, run.rank),
        collate_fn=collate_fn, **settings,
    )
    micro_batches = train_sampler.num_samples // config["BATCH_SIZE"]
    steps = math.ceil(micro_batches / config["GRADIENT_ACCUMULATION_STEPS"])
    if run.is_main:
        print(
            f"data: {len(train_dataset):,} training images ({train_dataset.describe()}), "
            f"{len(val_dataset):,} rainy validation images; {micro_batches:,} micro-batches = "
            f"{steps:,} optimizer steps per epoch; objective {run.objective.describe()}", flush=True,
        )
    if run.is_main and config["HOLDOUT_FAMILY"] is not None:
        print(f"validation without HOLDOUT_FAMILY={config['HOLDOUT_FAMILY']!r}: {val_dataset.describe()}", flush=True)
    val_files = getattr(val_dataset, "dataset", val_dataset)  # under RandomRainSet, the files it renders on
    return TrainingData(
        train_dataset, train_sampler, train_loader, val_loader, val_files.annotation_file,
        val_files.label_to_category_id, micro_batches, steps,
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then a cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rates(config: dict, model: IntegratedModel) -> list[float]:
    """The peak learning rate of each parameter group: SPDNet's, then the mix head's (SOFT_MIX)."""
    return [config["LEARNING_RATE"]] + ([config["SOFT_MIX_LEARNING_RATE"]] if model.mix_head is not None else [])


def build_optimizer(config: dict, model: IntegratedModel, steps_per_epoch: int):
    """AdamW over SPDNet's parameters (and the mix head's, its own group) only; warm-up then cosine decay
    over every epoch's steps."""
    groups = [{"params": list(model.spdnet.parameters()), "lr": config["LEARNING_RATE"]}]
    if model.mix_head is not None:
        groups.append({"params": list(model.mix_head.parameters()), "lr": config["SOFT_MIX_LEARNING_RATE"]})
    optimizer = torch.optim.AdamW(groups, lr=config["LEARNING_RATE"], weight_decay=config["WEIGHT_DECAY"])
    total_steps = steps_per_epoch * config["NUM_EPOCHS"]
    warmup = min(config["WARMUP_STEPS"], max(1, total_steps // 5))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, config["MIN_LR_RATIO"])
    )
    return optimizer, scheduler


def training_checkpoint(config, model, optimizer, scheduler, state: TrainState, fingerprint: str) -> dict:
    """``config``: the settings as the run applies them (``Run.resolved``)."""
    return {
        "spdnet": model.spdnet.state_dict(),
        **({"mix_head": model.mix_head.state_dict()} if model.mix_head is not None else {}),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state.to_dict(),
        "rng": rng_states(),
        "config": dict(config),
        "detector_fingerprint": fingerprint,
    }


# Settings that fix which images an epoch shows and in what order: micro_batches_done counts
# micro-batches of that order, so they cannot change in the middle of an epoch.
EPOCH_ORDER_SETTINGS = ("BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS", "PERCENT_DATASET", "COCO_RATIO", "RAIN_RATIO",
                        "SEED")


def continue_schedule(config: dict, model: IntegratedModel, optimizer, scheduler) -> None:
    """Put the settings now in force into a restored optimizer and scheduler.

    The learning rate is a function of the optimizer step: LEARNING_RATE x lr_factor(step) with the
    current WARMUP_STEPS, MIN_LR_RATIO and total steps (NUM_EPOCHS, the data settings). A resumed run
    continues from its step on that curve, and AdamW uses the current WEIGHT_DECAY; with unchanged
    settings this is exactly the schedule the checkpoint was on.
    """
    scheduler.base_lrs = learning_rates(config, model)
    for group, lr_lambda, peak in zip(optimizer.param_groups, scheduler.lr_lambdas, scheduler.base_lrs):
        group["initial_lr"] = peak
        group["lr"] = peak * lr_lambda(scheduler.last_epoch)
        group["weight_decay"] = config["WEIGHT_DECAY"]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def resume_or_start(config, model, optimizer, scheduler, run: Run) -> TrainState:
    """A fresh TrainState, or the one in OUTPUT_DIR/checkpoint.pt with weights and optimizer restored.

    The checkpoint must hold finite tensors only; a setting of EPOCH_ORDER_SETTINGS changed in the
    middle of an epoch is refused; schedule settings are honoured (``continue_schedule``).
    """
    if not config["RESUME"]:
        return TrainState()
    checkpoint, path = load_checkpoint(run.path(CHECKPOINT_FILE), config["KEEP_CHECKPOINTS"], "RESUME",
                                       ("spdnet", "optimizer"))
    state = TrainState(**checkpoint["state"])
    if state.micro_batches_done:
        for key in EPOCH_ORDER_SETTINGS:
            if checkpoint["config"][key] != config[key]:
                raise ConfigError(
                    f"{path} stopped in the middle of epoch {state.epoch + 1} with "
                    f"{key}={checkpoint['config'][key]!r}; "
                    f"resume with that value (it fixes the epoch's image order), not {config[key]!r}"
                )
    if ("mix_head" in checkpoint) != (model.mix_head is not None):
        raise ConfigError(f"{path} was trained with SOFT_MIX={'mix_head' in checkpoint}: resume with that value")
    model.spdnet.load_state_dict(checkpoint["spdnet"])
    if model.mix_head is not None:
        model.mix_head.load_state_dict(checkpoint["mix_head"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    continue_schedule(config, model, optimizer, scheduler)
    restore_rng_states(checkpoint["rng"])
    if checkpoint["detector_fingerprint"] != model.detector_fingerprint():
        raise ConfigError(
            f"{path} was trained against another detector (fingerprint {checkpoint['detector_fingerprint'][:12]}..., "
            f"now {model.detector_fingerprint()[:12]}...): resume with the same DETECTOR"
        )
    if run.is_main:
        print(
            f"resumed from {path} (SPDNet's weights come from it, not from SPDNET_WEIGHTS): epoch {state.epoch + 1}, "
            f"step {state.step}, best mAP {state.best_map:.4f}; "
            f"learning rate now {optimizer.param_groups[0]['lr']:.3g} "
            f"(LEARNING_RATE={config['LEARNING_RATE']:g})"
            + (f"; {part_size(config['BATCH_SIZE'], state.micro_batch_parts)} images per micro-batch, as chosen "
               "after an out-of-memory error (AUTO_MICRO_BATCH)" if state.micro_batch_parts > 1 else ""),
            flush=True,
        )
    return state


def check_ranks_agree(model: IntegratedModel, epoch_loss: float | None, run: Run) -> None:
    """Under torchrun, every rank must end an epoch with the same SPDNet weights and logged loss."""
    if run.world_size == 1:
        return
    mine = (state_dict_sha256(model.spdnet), None if epoch_loss is None else round(epoch_loss, 6))
    everyone = all_gather_objects(mine, run.world_size)
    if any(other != mine for other in everyone):
        raise RuntimeError(f"ranks disagree after an epoch (SPDNet hash, loss): {everyone}")
    print(f"rank {run.rank}: SPDNet weights and epoch loss {mine[1]} agree across {run.world_size} ranks", flush=True)


class DetectorChangedError(UserError, RuntimeError):
    """The frozen detector's fingerprint changed during training."""


def verify_detector(model: IntegratedModel, fingerprint: str, when: str) -> None:
    """The guarantee that clean-image detections are preserved, checked rather than assumed."""
    now = model.detector_fingerprint()
    if now != fingerprint:
        raise DetectorChangedError(
            f"the frozen detector changed {when} (SHA-256 {fingerprint[:16]}... -> {now[:16]}...): "
            "clean-image performance is no longer guaranteed. Aborting without saving."
        )


def adaptation_trainer(config, model, optimizer, scheduler, run: Run) -> Trainer:
    """The run's log, checkpoint and last good step, with the frozen detector checked before every save."""
    fingerprint = model.detector_fingerprint()

    def checkpoint(state: TrainState) -> dict:
        return training_checkpoint(run.resolved(config), model, optimizer, scheduler, state, fingerprint)

    return Trainer(log_path=run.path(LOG_NAME), checkpoint_path=run.path(CHECKPOINT_FILE), make_checkpoint=checkpoint,
                   checkpoint_every_steps=config["CHECKPOINT_EVERY_STEPS"],
                   check=lambda when: verify_detector(model, fingerprint, when), is_main=run.is_main,
                   fresh_log=not config["RESUME"], keep_checkpoints=config["KEEP_CHECKPOINTS"])


def adaptation_step(config, model: IntegratedModel, run: Run):
    """The loss of one micro-batch: ``adaptation_loss`` of SPDNet's derained images (the objective's terms)."""
    objective, device = run.objective, run.device

    def loss_of_batch(images, targets):
        clean = clean_pairs(targets, device) if objective.needs_clean_pair else None
        return adaptation_loss(model, images.to(device, non_blocking=True), detector_targets(targets, device), clean,
                               objective)

    terms = [t for t in LOSS_TERMS if getattr(objective, t)]
    settings = LoopSettings(config["GRADIENT_ACCUMULATION_STEPS"], config["GRAD_CLIP_NORM"], run.precision,
                            config["MAX_NONFINITE_IN_A_ROW"], config["LOG_EVERY_STEPS"], config["MAX_STEPS"],
                            tuple(terms), "SPDNet output or loss", config["AUTO_MICRO_BATCH"])
    return loss_of_batch, settings


def score(config, model, data: TrainingData, run: Run, label: str) -> dict:
    """Rainy-val COCO metrics of the model as it stands."""
    return evaluate(model, data.val_loader, data.val_annotation_file, data.label_to_category_id, device=run.device,
                    precision=run.precision, derain=True, description=f"rainy val {label}")


def score_before_training(config, model, data: TrainingData, state: TrainState, trainer: Trainer, run: Run) -> None:
    """EVAL_BEFORE_TRAINING: the starting SPDNet's rainy-val AP as epoch 0 (a fresh run only)."""
    if not (config["EVAL_BEFORE_TRAINING"] and state.epoch == 0 and state.step == 0 and not state.history):
        return
    metrics = score(config, model, data, run, "before")
    state.history.append({"epoch": 0, "val_AP": metrics["AP"]})
    trainer.log({"type": "epoch", "epoch": 0, "val_AP": metrics["AP"], "val_AP50": metrics["AP50"], "train_loss": None})
    if run.is_main:
        print(f"before adaptation: rainy-val AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}", flush=True)


def end_epoch(config, model, data: TrainingData, state: TrainState, trainer: Trainer, run: Run, result: dict,
              seconds: float) -> None:
    """Score rainy val, keep the best SPDNet in spdnet_adapted.pt, log and print the epoch, checkpoint."""
    check_ranks_agree(model, result["loss"], run)
    epoch_number = state.epoch + 1
    metrics = score(config, model, data, run, f"epoch {epoch_number}")
    improved = metrics["AP"] > state.best_map
    if improved:
        state.best_map, state.best_epoch, state.epochs_without_improvement = metrics["AP"], epoch_number, 0
        trainer.check(f"in epoch {epoch_number}")
        if run.is_main:
            atomic_save(adapted_weights(run.resolved(config), model, epoch_number, metrics), run.path(ADAPTED_FILE))
    else:
        state.epochs_without_improvement += 1
    trainer.log({
        "type": "epoch", "epoch": epoch_number, "step": state.step, "train_loss": result["loss"],
        "val_AP": metrics["AP"], "val_AP50": metrics["AP50"], "val_AP75": metrics["AP75"],
        "best_AP": state.best_map, "nonfinite_total": state.nonfinite_micro_batches,
        "unreadable_images": int(data.train_dataset.unreadable), "epoch_seconds": seconds,
    })
    state.history.append({"epoch": epoch_number, "val_AP": metrics["AP"]})
    if run.is_main:
        loss = "none (no step)" if result["loss"] is None else f"{result['loss']:.4f}"
        print(f"epoch {epoch_number}: train loss {loss}, rainy-val AP {metrics['AP']:.4f} "
              f"(best {state.best_map:.4f} at epoch {state.best_epoch})" + (" -> saved" if improved else ""),
              flush=True)
    state.epoch += 1
    state.micro_batches_done = 0
    trainer.save(state)
    trainer.remember(state)


def stopped(state: TrainState, run: Run, reason: str) -> dict:
    if run.is_main:
        print(f"stopped at step {state.step} ({reason}); continue with --RESUME=True "
              f"(checkpoint: {run.path(CHECKPOINT_FILE)})", flush=True)
    return {"state": state.to_dict(), "stopped": True}


def finish(model, trainer: Trainer, state: TrainState, run: Run, early_stopped: bool) -> dict:
    """The detector checked one last time, the training curves drawn, the outcome printed."""
    trainer.check("by the end of training")
    if run.is_main:
        plot_training_curves(run.path(LOG_NAME), run.path(PLOT_NAME))
        print(f"done: best rainy-val AP {state.best_map:.4f} at epoch {state.best_epoch} -> {run.path(ADAPTED_FILE)}; "
              f"detector unchanged (SHA-256 {model.detector_fingerprint()[:16]}...)", flush=True)
    return {"state": state.to_dict(), "stopped": False, "early_stopped": early_stopped}


def fit(config, model, optimizer, scheduler, data: TrainingData, state: TrainState, run: Run, should_stop) -> dict:
    """Epochs of training and rainy-val scoring until NUM_EPOCHS, early stopping, MAX_STEPS or a signal.

    MAX_STEPS reached at an epoch's last step ends that epoch as an uninterrupted run would (scored,
    saved) before stopping. Too many non-finite micro-batches in a row raise NonFiniteLossError after
    checkpoint.pt is set to the last step whose weights went on to give a finite loss.
    """
    trainer = adaptation_trainer(config, model, optimizer, scheduler, run)
    loss_of_batch, settings = adaptation_step(config, model, run)
    score_before_training(config, model, data, state, trainer, run)
    trainer.remember(state)
    max_steps = config["MAX_STEPS"]
    while state.epoch < config["NUM_EPOCHS"]:
        if max_steps is not None and state.step >= max_steps:
            return stopped(state, run, f"MAX_STEPS={max_steps}")
        data.train_sampler.set_epoch(state.epoch, start=state.micro_batches_done * config["BATCH_SIZE"])
        data.train_dataset.set_epoch(state.epoch)
        epoch_start = time.perf_counter()
        with trainer.saving_on_error():
            result = train_one_epoch(model, loss_of_batch, optimizer, scheduler, data.train_loader, state, settings,
                                     micro_batches_in_epoch=data.micro_batches_per_epoch, device=run.device,
                                     on_log=trainer.log, after_step=trainer.after_step, should_stop=should_stop)
        if result["stopped"]:
            trainer.save(state)
            reached = max_steps is not None and state.step >= max_steps
            return stopped(state, run, f"MAX_STEPS={max_steps}" if reached else "signal")
        end_epoch(config, model, data, state, trainer, run, result, time.perf_counter() - epoch_start)
        if state.epochs_without_improvement >= config["EARLY_STOPPING_PATIENCE"]:
            if run.is_main:
                print(f"early stopping: {state.epochs_without_improvement} epochs without improvement", flush=True)
            return finish(model, trainer, state, run, early_stopped=True)
    return finish(model, trainer, state, run, early_stopped=False)

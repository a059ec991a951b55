"""The loops every trainer and evaluation shares: ``train_one_epoch`` (the step with its non-finite
guard, gradient clipping, accumulation and logging), ``Trainer`` (an epoch loop's log, checkpoints
and the last good step around it) and ``evaluate`` (COCO mAP).

SPDNet adaptation, the rain gate and the demo's stand-ins all train through ``train_one_epoch``;
what differs is the loss of a batch (``loss_of_batch``), and the benchmark times the same function.
Precision is one code path (utils/runtime/device.autocast), so there is no second AMP loop.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from utils.data.coco import non_empty
from utils.runtime.checkpoint import append_line, save_checkpoint
from utils.runtime.device import autocast, memory_in_use_gb
from utils.runtime.errors import FileWriteError, SettingError, UserError
from utils.runtime.memory import free_cached_memory, in_parts, more_parts, part_size, split_batch
from utils.runtime.distributed import all_gather_objects, all_reduce_mean_, all_reduce_sum_, distributed_world
from utils.training.coco_eval import CocoEvaluator, coco_metrics

# (images (B, 3, H, W), targets) -> (loss, {term: detached value}): what one micro-batch costs.
LossOfBatch = Callable[[torch.Tensor, Sequence[Mapping]], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


def clean_pairs(targets: Sequence[Mapping], device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) clean originals of a batch (the dataset's ``return_clean_pair``) on ``device``."""
    return torch.stack([t["clean_image"] for t in targets]).to(device, non_blocking=True)


def detector_targets(targets: Sequence[Mapping], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The HF label dicts (``class_labels`` (N,), ``boxes`` (N, 4) normalised cx,cy,w,h) on ``device``."""
    return [
        {"class_labels": t["class_labels"].to(device, non_blocking=True),
         "boxes": t["boxes"].to(device, non_blocking=True)}
        for t in targets
    ]


class NonFiniteGuard:
    """Makes a micro-batch with a non-finite loss contribute nothing, without a host sync.

    A hook on every trainable parameter replaces its gradient by zeros when the current loss is not
    finite: the mask is applied before the gradient is accumulated, so the NaNs never reach ``.grad``
    and the other micro-batches of the accumulation window still count. The flag lives on the device.
    """

    def __init__(self, parameters: Iterable[nn.Parameter]):
        self.finite = None
        self.handles = [p.register_hook(self._mask) for p in parameters]

    def _mask(self, gradient: torch.Tensor) -> torch.Tensor:
        return torch.where(self.finite, gradient, torch.zeros_like(gradient))

    def set_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Remember whether ``loss`` is finite (a device tensor) and return that flag."""
        self.finite = torch.isfinite(loss.detach())
        return self.finite

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimizer steps taken in all
    micro_batches_done: int = 0  # micro-batches of this epoch consumed up to the last complete window
    best_map: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    nonfinite_micro_batches: int = 0
    micro_batch_parts: int = 1  # each loader batch runs as this many micro-batches (AUTO_MICRO_BATCH after OOM)
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLossError(UserError, RuntimeError):
    """Too many micro-batches in a row with a non-finite loss (MAX_NONFINITE_IN_A_ROW)."""


@dataclass(frozen=True)
class LoopSettings:
    """How ``train_one_epoch`` steps (Training_SPDNet_Adaptation.py's names in the comments)."""

    accumulation_steps: int  # GRADIENT_ACCUMULATION_STEPS
    clip_grad_norm: float | None  # GRAD_CLIP_NORM
    precision: str  # PRECISION
    max_nonfinite_in_a_row: int  # MAX_NONFINITE_IN_A_ROW
    log_every_steps: int = 10  # LOG_EVERY_STEPS
    max_steps: int | None = None  # MAX_STEPS
    terms: Sequence[str] = ()  # the names of the loss terms logged beside the loss
    nonfinite_what: str = "loss"  # what the non-finite error says went wrong
    auto_micro_batch: bool = True  # AUTO_MICRO_BATCH


class WindowStats:
    """One accumulation window's bookkeeping, kept on the device and read once per optimizer step (no
    host sync per micro-batch): the sum of its finite losses and of their unweighted terms, how many
    micro-batches were finite and how many not, and the longest run of non-finite micro-batches in a
    row (which spans windows)."""

    def __init__(self, device: torch.device, terms: Sequence[str] = ()):
        self.loss, self.finite, self.nonfinite, self.in_a_row, self.worst_in_a_row, self.in_a_row_at_start = (
            torch.zeros((), device=device) for _ in range(6))
        self.terms = {term: torch.zeros((), device=device) for term in terms}

    def add(self, loss: torch.Tensor, finite: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        self.loss += torch.where(finite, loss.detach(), torch.zeros_like(loss))
        for term, value in terms.items():
            self.terms[term] += torch.where(finite, value, torch.zeros_like(value))
        self.finite += finite
        self.nonfinite += ~finite
        self.in_a_row = torch.where(finite, torch.zeros_like(self.in_a_row), self.in_a_row + 1)
        self.worst_in_a_row = torch.maximum(self.worst_in_a_row, self.in_a_row)

    def read(self, world_size: int) -> tuple[list[float], dict[str, float]]:
        """([loss sum, finite count, non-finite count, worst run], {term: sum}) summed over ranks (the
        run's sum is an upper bound); starts the next window."""
        stats = torch.stack((self.loss, self.finite, self.nonfinite, self.worst_in_a_row, *self.terms.values()))
        all_reduce_sum_(stats, world_size)
        self.in_a_row_at_start.copy_(self.in_a_row)
        self.restart()
        values = stats.tolist()
        return values[:4], dict(zip(self.terms, values[4:]))

    def restart(self) -> None:
        """Forget this window's micro-batches (its start: after ``read``, or a replay after OOM)."""
        self.loss.zero_(), self.finite.zero_(), self.nonfinite.zero_()
        self.in_a_row.copy_(self.in_a_row_at_start), self.worst_in_a_row.copy_(self.in_a_row_at_start)
        for total in self.terms.values():
            total.zero_()


class MetricLogger:
    """Running means of named values since the last log line and over the epoch, and the images per
    second since the last log line (torchvision's references' MetricLogger, cut to what training logs)."""

    def __init__(self):
        self.sums = {"interval": {}, "epoch": {}}
        self.images = {"interval": 0, "epoch": 0}
        self.interval_start = time.perf_counter()

    def update(self, **values: float) -> None:
        for sums in self.sums.values():
            for name, value in values.items():
                total, count = sums.get(name, (0.0, 0))
                sums[name] = (total + value, count + 1)

    def add_images(self, count: int) -> None:
        self.images = {scope: seen + count for scope, seen in self.images.items()}

    def mean(self, name: str, scope: str = "interval") -> float | None:
        total, count = self.sums[scope].get(name, (0.0, 0))
        return total / count if count else None

    def images_per_second(self) -> float:
        return self.images["interval"] / max(time.perf_counter() - self.interval_start, 1e-9)

    def next_interval(self) -> None:
        self.sums["interval"], self.images["interval"], self.interval_start = {}, 0, time.perf_counter()


def train_one_epoch(
    model: nn.Module,
    loss_of_batch: LossOfBatch,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader: Iterable,
    state: TrainState,
    settings: LoopSettings,
    *,
    micro_batches_in_epoch: int,
    device: torch.device,
    on_log: Callable[[dict], None] | None = None,
    after_step: Callable[[TrainState], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    description: str | None = None,
    show_progress: bool = True,
) -> dict:
    """One epoch of training from micro-batch ``state.micro_batches_done``: forward, loss, non-finite
    guard, backward; at each window's end the gradient averaged over ranks, clipped, one optimizer and
    scheduler step, a log record every ``log_every_steps`` steps and ``after_step``.

    ``loader`` yields ``(images (B, 3, H, W), targets)`` (None: every image unreadable; it still takes
    its place). Windows of ``accumulation_steps`` micro-batches count from the epoch's start, the last
    may be shorter; each loss is divided by its window's size. A non-finite loss contributes nothing
    (``NonFiniteGuard``); a window without a finite one takes no step; ``max_nonfinite_in_a_row`` in a
    row raise NonFiniteLossError. ``should_stop()`` or ``max_steps`` stop at a window's end. Each loader
    batch runs as ``state.micro_batch_parts`` micro-batches; out of memory doubles them and replays the
    window (``fewer_images_per_micro_batch``). Returns {"loss": the epoch's mean finite loss (None: no
    step), "images": images seen, "stopped": bool}.
    """
    rank, world_size = distributed_world()
    parameters = [p for p in model.parameters() if p.requires_grad]
    guard, window, metrics = NonFiniteGuard(parameters), WindowStats(device, settings.terms), MetricLogger()
    index, accumulation, total = state.micro_batches_done, settings.accumulation_steps, micro_batches_in_epoch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    stopped, window_batches = False, []  # the window's loader batches so far (replayed after out of memory)
    progress = tqdm(total=total, initial=index, disable=rank != 0 or not show_progress, dynamic_ncols=True,
                    desc=description or f"epoch {state.epoch + 1}", unit="batch")
    try:
        for batch in loader:
            if should_stop():  # the partial window is dropped: a resume replays exactly its micro-batches
                stopped = True
                break
            window_start = index // accumulation * accumulation
            window_end = min(window_start + accumulation, total)
            window_size = window_end - window_start
            replay = [batch] if batch is not None else []
            window_batches += replay
            while replay:
                try:
                    for images, targets in replay:
                        for part, part_targets in split_batch(images, targets, state.micro_batch_parts):
                            with autocast(device, settings.precision):
                                loss, terms = loss_of_batch(part, part_targets)
                            finite = guard.set_loss(loss)
                            (loss / (window_size * len(images) / len(part))).backward()
                            window.add(loss, finite, terms)
                    replay = []
                except torch.OutOfMemoryError:
                    if not settings.auto_micro_batch:
                        raise
                    replay = window_batches  # out of the handler first: its traceback holds the tensors
                if replay:
                    fewer_images_per_micro_batch(state, settings, len(batch[0]), device, optimizer, window, on_log)
            metrics.add_images(len(batch[0]) if batch is not None else 0)
            progress.update(1)
            index += 1
            if index < window_end:
                continue
            state.micro_batches_done, window_batches = index, []
            (loss_sum, finite_count, nonfinite_count, worst), term_sums = window.read(world_size)
            all_reduce_mean_([p.grad for p in parameters if p.grad is not None], world_size)
            state.nonfinite_micro_batches += int(nonfinite_count)
            if finite_count == 0:  # not a step: AdamW would move on stale moments, the schedule would count it
                optimizer.zero_grad(set_to_none=True)
            else:
                grad_norm = (None if settings.clip_grad_norm is None else
                             float(torch.nn.utils.clip_grad_norm_(parameters, settings.clip_grad_norm)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                state.step += 1
                metrics.update(loss=loss_sum / finite_count,
                               **{f"loss_{t}": value / finite_count for t, value in term_sums.items()})
                if state.step % settings.log_every_steps == 0:
                    log_step(state, settings, metrics, step_lr, grad_norm, device, progress, on_log)
                if after_step is not None:
                    after_step(state)
            if worst >= settings.max_nonfinite_in_a_row:
                raise NonFiniteLossError(
                    f"{int(worst)} micro-batches in a row had a non-finite {settings.nonfinite_what} (limit "
                    f"MAX_NONFINITE_IN_A_ROW={settings.max_nonfinite_in_a_row}); stopping.")
            if settings.max_steps is not None and state.step >= settings.max_steps and index < total:
                stopped = True
                break
    finally:
        progress.close()
        guard.remove()
    return {"loss": metrics.mean("loss", "epoch"), "images": metrics.images["epoch"] * world_size, "stopped": stopped}


def log_step(state: TrainState, settings: LoopSettings, metrics: MetricLogger, lr: float, grad_norm: float | None,
             device, progress, on_log) -> None:
    """The step's log record (means since the last one) to ``on_log`` and the progress bar."""
    _, world_size = distributed_world()
    record = {
        "type": "train", "epoch": state.epoch + 1, "step": state.step, "loss": metrics.mean("loss"),
        **{f"loss_{term}": metrics.mean(f"loss_{term}") for term in settings.terms},
        "lr": lr, "grad_norm": grad_norm, "images_per_s": world_size * metrics.images_per_second(),
        "memory_gb": memory_in_use_gb(device), "nonfinite_total": state.nonfinite_micro_batches,
    }
    progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                         img_s=f"{record['images_per_s']:.1f}", mem=f"{record['memory_gb']:.1f}G")
    if on_log is not None:
        on_log(record)
    metrics.next_interval()


def fewer_images_per_micro_batch(state: TrainState, settings: LoopSettings, batch_size: int, device,
                                 optimizer, window: WindowStats, on_log) -> None:
    """After out of memory: twice the parts (``more_parts``: at one image, OutOfMemoryAtOneImageError),
    the window's gradients and statistics dropped for its replay, one line and one log record."""
    optimizer.zero_grad(set_to_none=True)
    window.restart()
    free_cached_memory(device)
    before = part_size(batch_size, state.micro_batch_parts)
    state.micro_batch_parts = more_parts(state.micro_batch_parts, batch_size, device, "training")
    record = {"type": "out_of_memory", "epoch": state.epoch + 1, "step": state.step,
              "micro_batch": part_size(batch_size, state.micro_batch_parts),
              "gradient_accumulation_steps": settings.accumulation_steps * state.micro_batch_parts,
              "effective_batch": settings.accumulation_steps * batch_size}
    print(f"out of memory with {before} images per micro-batch after step {state.step}: now {record['micro_batch']} "
          f"images per micro-batch and {record['gradient_accumulation_steps']} accumulation steps (the same "
          f"{record['effective_batch']} images per optimizer step); the window restarts from step {state.step}",
          flush=True)
    if on_log is not None:
        on_log(record)


class Trainer:
    """What an epoch loop keeps around ``train_one_epoch``: the JSONL log, the checkpoint file, and the
    last good step (a step is good once the window after it, which ran on its weights, gave a finite
    loss), so that a run stopped by non-finite losses saves the weights that still worked.

    ``make_checkpoint(state)`` gives the dict a checkpoint holds (None: the run keeps no checkpoint);
    the last ``keep_checkpoints`` checkpoints stay on disk (``save_checkpoint``); ``check(when)`` runs
    before anything is saved (SPDNet adaptation checks the frozen detector there). Only the main
    process (``is_main``) writes files.
    """

    def __init__(self, *, log_path: str | None, checkpoint_path: str | None,
                 make_checkpoint: Callable[[TrainState], dict] | None, checkpoint_every_steps: int | None = None,
                 check: Callable[[str], None] = lambda when: None, is_main: bool = True, fresh_log: bool = True,
                 keep_checkpoints: int = 2):
        if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
            raise SettingError(f"KEEP_CHECKPOINTS must be a positive integer, got {keep_checkpoints!r}")
        self.log_path, self.checkpoint_path, self.make_checkpoint = log_path, checkpoint_path, make_checkpoint
        self.checkpoint_every_steps, self.check, self.is_main = checkpoint_every_steps, check, is_main
        self.keep_checkpoints, self.written_step = keep_checkpoints, None
        self.latest = self.good = None
        if fresh_log and is_main and log_path and os.path.exists(log_path):
            os.remove(log_path)

    def log(self, record: dict) -> None:
        if self.is_main and self.log_path:
            append_line(self.log_path, json.dumps(record))

    def write(self, checkpoint: dict) -> None:
        """The checkpoint on disk; the older ones move down (``save_checkpoint``) unless the newest
        holds the same step (an epoch's end, a stop), which it replaces."""
        step = checkpoint["state"]["step"]
        if self.is_main:
            save_checkpoint(checkpoint, self.checkpoint_path, self.keep_checkpoints, rotate=step != self.written_step)
        self.written_step = step

    def write_checked(self, checkpoint: dict) -> int:
        """``write`` once ``check`` passed; returns the checkpoint's step."""
        step = checkpoint["state"]["step"]
        self.check(f"at step {step}")
        self.write(checkpoint)
        return step

    def save(self, state: TrainState) -> None:
        """Checkpoint ``state`` now (atomically)."""
        self.check(f"at step {state.step}")
        if self.make_checkpoint is not None:
            self.write(self.make_checkpoint(state))

    def save_latest(self) -> None:
        """After an error that is not the user's (a bug, or out of memory at one image): the last
        completed step's checkpoint written, as on SIGTERM, before the error goes on."""
        if self.latest is None:
            return
        step = self.write_checked(self.latest)
        if self.is_main:
            print(f"saved step {step}, the last completed one, to {self.checkpoint_path}: once the cause below is "
                  "fixed, continue with --RESUME=True", flush=True)

    def remember(self, state: TrainState) -> None:
        """Keep ``state``'s checkpoint in memory as the latest step's."""
        if self.make_checkpoint is not None:
            self.latest = copy.deepcopy(self.make_checkpoint(state))

    def after_step(self, state: TrainState) -> None:
        """``train_one_epoch``'s hook: the step before this one is now known to be good."""
        self.good = self.latest
        self.remember(state)
        if self.checkpoint_every_steps and state.step % self.checkpoint_every_steps == 0:
            self.save(state)

    def save_last_good(self) -> str:
        """Write the last good step's checkpoint; what the user should do next, in words."""
        if self.good is None:
            return ("No step gave a finite loss since the start of this run, so nothing was saved: check "
                    "the starting weights (or the resumed checkpoint) and the learning rate.")
        step = self.write_checked(self.good)
        return (f"{self.checkpoint_path} holds step {step}, the last whose weights gave a finite loss: continue "
                "from it with --RESUME=True and a lower --LEARNING_RATE (honoured on resume: the schedule "
                "continues from that step at the new rate) or PRECISION='fp32'.")

    @contextlib.contextmanager
    def saving_on_error(self):
        """Around ``train_one_epoch``: NonFiniteLossError after saving the last good step; any other
        error but a failed write after saving the last completed step."""
        try:
            yield
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"{error} {self.save_last_good()}") from None
        except FileWriteError:
            raise  # the disk is full: the checkpoint on disk is the last one that could be written
        except Exception:
            self.save_latest()
            raise


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    coco_gt,
    label_to_category_id: Mapping[int, int],
    *,
    device: torch.device,
    precision: str = "fp32",
    derain: bool = True,
    per_class: bool = False,
    description: str = "eval",
    detections: list | None = None,
) -> dict:
    """COCO mAP of ``model`` on ``loader`` (every rank scores its shard; rank 0 gathers and scores all).

    ``model`` is an IntegratedModel (``derain`` chooses whether SPDNet runs; its detector's adapter
    post-processes) and ``loader`` yields ``(images (B, 3, H, W) in 0-1, targets)`` whose targets carry
    ``image_id`` and ``orig_size`` (h, w). ``detections``: a list that receives the COCO results scored
    (``image_id``, dataset ``category_id``, ``bbox`` x,y,w,h in original pixels, ``score``).

    Returns:
        AP, AP50, AP75, APs, APm, APl (per_class_AP on request), ``ms_per_image`` (model time only,
        synchronised per batch) and ``images``. Out of memory: the batches are split (``in_parts``).
    """
    rank, world_size = distributed_world()
    model.eval()
    evaluator = CocoEvaluator(coco_gt, label_to_category_id, model.adapter)
    model_seconds, images_seen, parts = 0.0, 0, 1

    def score(images, targets) -> None:
        nonlocal model_seconds, images_seen
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, precision):
            outputs = model(images, derain=derain)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - start
        images_seen += len(images)
        evaluator.update(
            outputs.logits, outputs.pred_boxes,
            [int(t["image_id"]) for t in targets], torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]),
        )

    for images, targets in non_empty(tqdm(loader, desc=description, disable=rank != 0, dynamic_ncols=True,
                                          leave=False)):
        parts = in_parts(score, images.to(device, non_blocking=True), targets, parts, device, description)
    results, image_ids = evaluator.results, evaluator.image_ids
    if world_size > 1:
        gathered = all_gather_objects((results, image_ids, model_seconds, images_seen), world_size)
        results = [r for part in gathered for r in part[0]]
        image_ids = [i for part in gathered for i in part[1]]
        model_seconds = max(part[2] for part in gathered)
        images_seen = sum(part[3] for part in gathered)
    metrics = coco_metrics(evaluator.coco_gt, results, image_ids, per_class=per_class)
    if detections is not None:
        detections.extend(results)
    metrics["ms_per_image"] = 1000.0 * model_seconds * world_size / max(images_seen, 1)
    metrics["images"] = images_seen
    return metrics

"""Adapt SPDNet so that its derained images are the ones a frozen RT-DETR detects best.

    rainy image (0-1) -> x255 -> SPDNet (trained) -> /255, clamp -> RT-DETR (frozen, eval) -> detection loss

Edit the constants below, or override them:

    python Training_SPDNet_Adaptation.py                                # full COCO_rain run
    python Training_SPDNet_Adaptation.py configs/demo.py               # the CPU demo world
    python Training_SPDNet_Adaptation.py --BATCH_SIZE=4 --RESUME=True   # any constant as --KEY=value
    torchrun --nproc_per_node=4 Training_SPDNet_Adaptation.py          # several GPUs
"""

from __future__ import annotations

import os

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- data
COCO_DIR = settings.COCO_DIR  # clean COCO: train2017/, val2017/, annotations/instances_{train,val}2017.json
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO in the same layout; several such folders joined by ":"
#   (os.pathsep) = rain variants
PERCENT_DATASET = 10.0  # percent of the training images used (10 -> ~11,800 on COCO train2017; 0.5 -> ~590)
COCO_RATIO = 0.5  # fraction of the chosen training images also used clean (teaches SPDNet to leave clean images alone)
RAIN_RATIO = 1.0  # fraction of the chosen training images used rainy
HOLDOUT_FAMILY = None  # rain family kept out of every training image (one of utils/data/rain.FAMILIES, e.g. "drops"):
#   its variants of COCO_RAIN_DIR are dropped from training (validation keeps them, as configured); RANDOM_RAIN never
#   draws it
RANDOM_RAIN = 0.0  # fraction of the rainy training images re-rendered on the fly (per image and epoch) from their clean
#   original in COCO_DIR with a randomised preset of every family but HOLDOUT_FAMILY
LIBRARY_WEATHER = 0.0  # fraction of the clean training images shown with weather from a library instead (fog, snow,
#   sun flare, shadow, low light, noise, blur: utils/data/library_weather.py), per image and epoch
VAL_PERCENT = 100.0  # percent of the rainy validation images scored after every epoch (fractions allowed)
IMAGE_SIZE = settings.IMAGE_SIZE  # square input size (multiple of 32), a plain resize as RTDetrImageProcessor does
# ---- models
DETECTOR = "PekingU/rtdetr_r18vd"  # hub id or local save_pretrained directory of the frozen detector
SPDNET_WEIGHTS = "./weights/spdnet_official.pt"  # official SPDNet weights to start from (None: random init)
SPDNET_N_FEATS = 32  # SPDNet width (32 for the official weights)
SPDNET_N_RESBLOCKS = 3  # SPDNet residual blocks per group (3 for the official weights)
SOFT_MIX = False  # SPDNet's output mixed with its input, x + m * (SPDNet(x) - x), m per image from a small head on
#   the frozen detector's view of x, trained with SPDNet by the same loss (docs/unseen_rain.md)
SOFT_MIX_LEARNING_RATE = 1e-3  # AdamW peak learning rate of the mix head (it starts from scratch)
# ---- objective (docs/objectives.md): the weights of the loss terms, 0 switches one off
DETECTION_LOSS_WEIGHT = 1.0  # RT-DETR's own detection loss of SPDNet's output
FEATURE_LOSS_WEIGHT = 10.0  # frozen detector's encoder features of SPDNet's output vs of the clean original (COCO_DIR);
#   default from docs/objectives.md
PIXEL_LOSS_WEIGHT = 0.0  # L1 between SPDNet's output and the clean original (COCO_DIR, same file name)
# ---- optimisation
NUM_EPOCHS = 10  # passes over the training subset
BATCH_SIZE = 2  # images per micro-batch (per GPU)
GRADIENT_ACCUMULATION_STEPS = 8  # micro-batches per optimizer step
LEARNING_RATE = 1e-4  # AdamW peak learning rate for SPDNet
WEIGHT_DECAY = 0.0  # AdamW weight decay (0: stay close to the pretrained deraining weights)
WARMUP_STEPS = 100  # optimizer steps of linear warm-up before the cosine decay
MIN_LR_RATIO = 0.1  # the cosine decays to this fraction of LEARNING_RATE
GRAD_CLIP_NORM = 1.0  # clip the gradient's global norm (None: no clipping)
EARLY_STOPPING_PATIENCE = 5  # stop after this many epochs without a better rainy-val mAP
MAX_NONFINITE_IN_A_ROW = 20  # stop when this many micro-batches in a row give a NaN/inf SPDNet output or loss
MAX_STEPS = None  # stop (resumably) after this many optimizer steps in all (None: run every epoch)
# ---- precision and speed
FP16 = False  # refused: SPDNet overflows fp16 (use PRECISION = "bf16")
PRECISION = "auto"  # "auto" (bf16 where native: CUDA compute capability >= 8.0, CPUs with AVX512-BF16/AMX; else fp32),
#   "fp32" or "bf16" (autocast for SPDNet; the detector, its loss and all weights stay fp32)
GRADIENT_CHECKPOINTING = True  # recompute SPDNet's activations in backward: 14.8 -> 2.1 GB per 640² image
#   at 0.63x speed (benchmarks/bench.py, CPU)
CHANNELS_LAST = False  # SPDNet in NHWC memory layout (faster convolutions, bf16 above all)
COMPILE = "off"  # torch.compile SPDNet: "off", "default", "max-autotune-no-cudagraphs", "max-autotune",
#   "reduce-overhead" (minutes to compile; CPU: 1.15-1.25x per step, 1.7-2.7x the peak memory; GPU not measured:
#   docs/performance.md)
# ---- system
DEVICE = settings.DEVICE  # "auto" (cuda if available), "cuda", "cuda:1" or "cpu"
CPU_THREADS = settings.CPU_THREADS  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = settings.DATALOADER_WORKERS  # data loading processes per GPU
SEED = settings.SEED  # seeds the subset, the data order, the rain variants and the initialisation
# ---- output
OUTPUT_DIR = settings.OUTPUT_DIR  # checkpoints, spdnet_adapted.pt, logs and plots
RESUME = False  # continue from OUTPUT_DIR/checkpoint.pt
CHECKPOINT_EVERY_STEPS = 200  # also checkpoint every this many optimizer steps (None: per epoch only)
KEEP_CHECKPOINTS = settings.KEEP_CHECKPOINTS  # checkpoints kept; RESUME falls back to the previous one when the
#   newest is unreadable or holds NaN/inf
AUTO_MICRO_BATCH = settings.AUTO_MICRO_BATCH  # on out of memory: halve the micro-batch, double the accumulation
#   (same effective batch and schedule), replay the window; False: the error ends the run
LOG_EVERY_STEPS = 10  # optimizer steps per line in training_log.jsonl
EVAL_BEFORE_TRAINING = True  # score the starting SPDNet first, as the "epoch 0" baseline

from utils.runtime.config import command_line, load_config  # noqa: E402  (the constants above come first, as users read them)


def main(argv: list[str] | None = None) -> dict:
    quiet = int(os.environ.get("RANK", "0")) != 0  # rank 0 alone prints the config
    config = load_config(globals(), argv, quiet=quiet)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.apps import adaptation as training
    from utils.data.coco import check_data_dirs
    from utils.models.detector import model_state_lines
    from utils.apps.pipelines import build_training_model
    from utils.runtime.device import set_cpu_threads

    training.check_config(config)
    set_cpu_threads(config["CPU_THREADS"])
    check_data_dirs(config["COCO_DIR"], config["COCO_RAIN_DIR"], ["train", "val"])
    training.training_rain_dirs(config)  # HOLDOUT_FAMILY leaves something rainy to train on
    run = training.setup_run(config)
    model = build_training_model(config, run.device)
    training.compile_for_training(config, model, run)
    if run.is_main:
        print("\n".join(model_state_lines(model.spdnet, model.detector)), flush=True)
    data = training.build_data(config, model.detector.config.id2label, run)
    optimizer, scheduler = training.build_optimizer(config, model, data.steps_per_epoch)
    state = training.resume_or_start(config, model, optimizer, scheduler, run)
    stop = training.StopRequested().install()
    try:
        return training.fit(config, model, optimizer, scheduler, data, state, run, should_stop=stop)
    finally:
        stop.uninstall()
        training.teardown(run)


if __name__ == "__main__":
    command_line(main)

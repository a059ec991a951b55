"""Train the rain gate: a small classifier telling rainy images from clean ones.

    python Training_Rain_Detector.py                   # COCO vs COCO_rain
    python Training_Rain_Detector.py configs/demo.py configs/demo_rain_gate.py   # the CPU demo world

Chooses its decision threshold on the validation split (best accuracy), fits a calibration
temperature there (soft routing's P(rain); no decision changes), reports accuracy, precision and
recall of "rainy", and saves OUTPUT_DIR/rain_detector.pt. It logs to OUTPUT_DIR/rain_detector_log.jsonl;
Ctrl-C (or SIGTERM) saves OUTPUT_DIR/rain_detector_checkpoint.pt, which --RESUME=True continues bit for bit.

With configs/demo.py and configs/demo_rain_gate.py it trains a gate on the demo world with the demo
gate's recipe (the GATE_* settings, ARCHITECTURE and INPUT_SIZE there; with --SEED=0 it repeats bit for
bit the demo's own gate, which Make_Demo.py keeps in DEMO_DIR/demo_gate/).

For a gate that holds on rain it has never seen (docs/rain_gate.md):

    python Training_Rain_Detector.py --HOLDOUT_FAMILY=drops --EPOCH_VARIANTS=True --RANDOM_RAIN=0.5 \
        --AUGMENT_BLUR=0.3 --AUGMENT_JPEG=0.5 --AUGMENT_JITTER=0.2 --AUGMENT_NOISE=0.03

trains on every variant of COCO_RAIN_DIR but the drop family's, and scores the drop variants apart.
The gate's own sizes and schedule are GATE_*: IMAGE_SIZE, PERCENT_DATASET, NUM_EPOCHS, ... are the
SPDNet scripts' (a config file shared with them, such as configs/demo.py, leaves the gate's alone).
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- data
COCO_DIR = settings.COCO_DIR  # clean COCO: train2017/, val2017/, annotations/
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO in the same layout (several directories = rain variants)
GATE_PERCENT_DATASET = 5.0  # percent of the training images used (half shown clean, half rainy; fractions allowed)
GATE_VAL_PERCENT = 20.0  # percent of the validation images used (half clean, half rainy; fractions allowed)
GATE_IMAGE_SIZE = 320  # images are loaded at this square size, then the gate downscales to INPUT_SIZE
# ---- rain families and diversity (the defaults train the gate exactly as before they existed)
HOLDOUT_FAMILY = None  # rain family kept out of training and threshold choice ("streaks", "drops" or "downpour");
#   its variants in COCO_RAIN_DIR are scored apart
EPOCH_VARIANTS = False  # each epoch draws anew for every image: rain variant, flip, RANDOM_RAIN and AUGMENT_*;
#   False: epoch 1's throughout
RANDOM_RAIN = 0.0  # fraction of rainy training images re-rendered from their clean copy with a randomised preset
#   of every family but HOLDOUT_FAMILY
LIBRARY_WEATHER = 0.0  # fraction of the clean training images shown with library weather (fog, snow, sun flare,
#   shadow, low light, noise, blur: utils/data/library_weather.py), still labelled clean
AUGMENT_BLUR = 0.0  # probability of a Gaussian blur (sigma 0.3-1.5 px) on a training image, clean or rainy
AUGMENT_JPEG = 0.0  # probability of re-encoding a training image as JPEG at quality 30-90
AUGMENT_JITTER = 0.0  # largest relative change of brightness, contrast and saturation (0.2: factors 0.8-1.2)
AUGMENT_NOISE = 0.0  # largest std of Gaussian sensor noise, 0-1 scale (added to half the training images)
# ---- model
ARCHITECTURE = "mobilenet_v3_small"  # "small_cnn", "mobilenet_v3_small" or "resnet18"
IMAGENET_WEIGHTS = None  # a local torchvision ImageNet state dict to start from (None: from scratch)
INPUT_SIZE = 224  # the gate's own input resolution
# ---- optimisation
GATE_NUM_EPOCHS = 5  # passes over the training subset
GATE_BATCH_SIZE = 32  # images per step
GATE_LEARNING_RATE = 1e-3  # AdamW learning rate (cosine decay to 0)
# ---- system
DEVICE = settings.DEVICE  # "auto", "cuda", "cpu", ...
CPU_THREADS = settings.CPU_THREADS  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = settings.DATALOADER_WORKERS  # data loading processes
SEED = settings.SEED  # subsets, order and initialisation
# ---- output
OUTPUT_DIR = settings.OUTPUT_DIR  # rain_detector.pt goes here
RESUME = False  # continue from OUTPUT_DIR/rain_detector_checkpoint.pt
LOG_EVERY_STEPS = 10  # optimizer steps per line in rain_detector_log.jsonl
KEEP_CHECKPOINTS = settings.KEEP_CHECKPOINTS  # checkpoints kept; RESUME falls back to the previous one when the
#   newest is unreadable or holds NaN/inf
AUTO_MICRO_BATCH = settings.AUTO_MICRO_BATCH  # on out of memory: halve the micro-batch, double the accumulation
#   (same effective batch and schedule), replay the window; False: the error ends the run

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.apps.gate_training import train_rain_detector
    from utils.runtime.device import set_cpu_threads

    set_cpu_threads(config["CPU_THREADS"])
    return train_rain_detector(config)


if __name__ == "__main__":
    command_line(main)

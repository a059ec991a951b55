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

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    from utils.apps.gate_training import train_rain_detector

    return train_rain_detector(config)


if __name__ == "__main__":
    command_line(main)

"""Train the utility gate: a router learnt from the frozen detector's own loss, not from rain labels.

    python Training_Utility_Gate.py                          # after Training_SPDNet_Adaptation.py
    python Training_Utility_Gate.py --UTILITY_MODE=soft      # end-to-end soft routing instead
    python Training_Utility_Gate.py configs/demo.py          # the CPU demo world (after its adaptation)

The rain gate answers "is this the rain I was trained on?"; the gated model needs "will SPDNet help
the detector on this image?". UTILITY_MODE="gain" labels each training image 1 when the adapted SPDNet
lowers the frozen detector's loss on it (L(x) - L(SPDNet(x)) > UTILITY_MARGIN) and learns that as a
classification; "soft" minimises the detector's loss of g * SPDNet(x) + (1 - g) * x, g the gate's
sigmoid, end to end (gradients reach the gate only). Either way the gate is the rain gate's RainDetector:
after every epoch its threshold and calibration are chosen on val against the oracle (per image, the
path with the lower detector loss), accuracy, precision and recall against it are printed, and the
most accurate epoch is saved as OUTPUT_DIR/utility_gate.pt in the rain gate's format. Give it to
Eval_conditional.py or Infer.py as --GATE_WEIGHTS=OUTPUT_DIR/utility_gate.pt (docs/rain_gate.md).

Logs to OUTPUT_DIR/utility_gate_log.jsonl; Ctrl-C (or SIGTERM) saves OUTPUT_DIR/utility_gate_checkpoint.pt,
which --RESUME=True continues.
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- data
COCO_DIR = settings.COCO_DIR  # clean COCO: train2017/, val2017/, annotations/
COCO_RAIN_DIR = settings.COCO_RAIN_DIR  # rainy COCO in the same layout (several directories = rain variants)
HOLDOUT_FAMILY = None  # rain family kept out of training and threshold choice ("streaks", "drops" or "downpour");
#   its variants in COCO_RAIN_DIR are scored apart against the oracle
LIBRARY_WEATHER = 0.0  # fraction of the clean training images shown with library weather (fog, snow, sun flare,
#   shadow, low light, noise, blur: utils/data/library_weather.py); their targets are the detector's loss on them
GATE_PERCENT_DATASET = 5.0  # percent of the training images used (half shown clean, half rainy; fractions allowed)
GATE_VAL_PERCENT = 20.0  # percent of the validation images used (half clean, half rainy; fractions allowed)
IMAGE_SIZE = settings.IMAGE_SIZE  # square size (multiple of 32) of the detector's input; the gate downscales
#   it to INPUT_SIZE
# ---- the frozen paths the gate chooses between
DETECTOR = "PekingU/rtdetr_r18vd"  # hub id or local directory of the frozen detector
ADAPTED_WEIGHTS = None  # adapted SPDNet (None: OUTPUT_DIR/spdnet_adapted.pt)
SPDNET_N_FEATS = 32  # SPDNet width, when the weights file does not record it
SPDNET_N_RESBLOCKS = 3  # SPDNet blocks, when the weights file does not record it
# ---- what the gate learns
UTILITY_MODE = "gain"  # "gain": BCE against "SPDNet lowers this image's detector loss"; "soft": the detector's
#   loss of the blend g * SPDNet(x) + (1 - g) * x, end to end
UTILITY_MARGIN = 0.0  # SPDNet's path counts as better when it lowers the detector's loss by more than this
#   (training targets in "gain", the oracle on val in both modes)
# ---- model
ARCHITECTURE = "detector_view"  # "detector_view": a small head on the frozen detector's encoder features (no
#   pixels; the router that carries to weather it never trained on, docs/unseen_rain.md); or a CNN on pixels:
#   "small_cnn", "mobilenet_v3_small", "resnet18"
IMAGENET_WEIGHTS = None  # a local torchvision ImageNet state dict to start from (None: from scratch)
INPUT_SIZE = 224  # the pixel gates' own input resolution
# ---- optimisation
GATE_NUM_EPOCHS = 5  # passes over the training subset
GATE_BATCH_SIZE = 32  # images per step ("gain": two detector passes per batch, without and with SPDNet)
GATE_LEARNING_RATE = 1e-3  # AdamW learning rate (cosine decay to 0)
# ---- system
DEVICE = settings.DEVICE  # "auto", "cuda", "cpu", ...
CPU_THREADS = settings.CPU_THREADS  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = settings.DATALOADER_WORKERS  # data loading processes
SEED = settings.SEED  # subsets, order and initialisation
# ---- output
OUTPUT_DIR = settings.OUTPUT_DIR  # utility_gate.pt goes here (and ADAPTED_WEIGHTS is read from here)
RESUME = False  # continue from OUTPUT_DIR/utility_gate_checkpoint.pt
LOG_EVERY_STEPS = 10  # optimizer steps per line in utility_gate_log.jsonl
KEEP_CHECKPOINTS = settings.KEEP_CHECKPOINTS  # checkpoints kept; RESUME falls back to the previous one when the
#   newest is unreadable or holds NaN/inf
AUTO_MICRO_BATCH = settings.AUTO_MICRO_BATCH  # on out of memory: halve the micro-batch, double the accumulation
#   (same effective batch and schedule), replay the window; False: the error ends the run

from utils.runtime.config import command_line, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    from utils.apps.utility_gate import check_utility_config, train_utility_gate
    from utils.runtime.device import set_cpu_threads

    check_utility_config(config)
    set_cpu_threads(config["CPU_THREADS"])
    return train_utility_gate(config)


if __name__ == "__main__":
    command_line(main)

"""The settings several scripts share, declared once: each script's constants block takes its value
from here (``COCO_DIR = settings.COCO_DIR  # ...``), so it still lists every setting it uses at its
top, with its own comment, while a default cannot drift between scripts (tests/test_config.py checks
that every script declaring one of these names has this value).

Plain constants, no imports: a script reads them before torch is imported. A setting that means
something else in some script has another name there (the rain gate's GATE_IMAGE_SIZE, the rendered
data's RAIN_SEED and WORLD_SEED, ...).
"""

# ---- data
COCO_DIR = "./data/coco"  # clean COCO: {train,val}2017/ and annotations/instances_{train,val}2017.json
COCO_RAIN_DIR = "./data/coco_rain"  # rainy COCO in the same layout and file names (a folder of rain variants, or
#   several folders joined by os.pathsep, ":" on Linux)
# ---- the detector's input
IMAGE_SIZE = 640  # square size (multiple of 32) the SPDNet / detector scripts resize every image to
# ---- device and threads
DEVICE = "auto"  # "auto" (cuda if available), "cuda", "cuda:1" or "cpu"
CPU_THREADS = None  # PyTorch's CPU threads (None: its default, one per core);
#   the same count repeats a CPU run bit for bit
DATALOADER_WORKERS = 8  # data loading processes (per GPU) of the training scripts
EVAL_DATALOADER_WORKERS = 4  # data loading processes of the evaluation scripts (their DATALOADER_WORKERS)
# ---- seed
SEED = 42  # seeds a run's subsets, data order, rain variants and initialisation
# ---- output
OUTPUT_DIR = "./outputs_spdnet_adaptation"  # where the scripts write weights, logs and results, and read each other's
# ---- surviving a real machine (the training scripts)
KEEP_CHECKPOINTS = 2  # checkpoints kept (checkpoint.pt, checkpoint.1.pt, ...): RESUME falls back to the previous
#   one when the newest is unreadable or holds NaN/inf
AUTO_MICRO_BATCH = True  # on out of memory in a training step, halve the micro-batch and double the accumulation
#   (same effective batch and schedule) and replay the window; False: the error ends the run

# Settings that are gone: given in a config file or as --KEY=value, each is refused in one line that says
# what to do instead.
RETIRED_SETTINGS = {
    "RAIN_DETECTOR_WEIGHTS": "is now called GATE_WEIGHTS (same meaning: it takes a rain gate or a utility gate)",
    "PREPARE_DEMO": "is gone: build the demo world first with `python Make_Demo.py` (configs/demo.py lists the "
                    "demo's commands)",
}

# The CPU demo: every script on the synthetic world that Make_Demo.py builds (or reuses).
#   python Make_Demo.py   (the world, its rain gate and the kept stand-ins' quality on it; this file's DEMO_*
#     settings are its own: `python Make_Demo.py configs/demo.py` is the same)
#   python Training_SPDNet_Adaptation.py configs/demo.py
#   python Training_Utility_Gate.py configs/demo.py  (the detector-view gate: DEMO_DIR/utility_gate.pt)
#   python Eval_SPDNet_Adaptation.py configs/demo.py
#   python Eval_conditional.py configs/demo.py
#   python Training_Rain_Detector.py configs/demo.py configs/demo_rain_gate.py  (a rain gate with the recipe of the
#     demo's own, which Make_Demo.py keeps in DEMO_DIR/demo_gate/: DEMO_DIR/rain_detector.pt)
# Every script takes the keys it has and skips the others' (DEMO_* are Make_Demo.py's).
DEMO_DIR = "./outputs_spdnet_adaptation/demo"
DEMO_WEIGHTS_DIR = "./demo_weights"  # kept in the repository, made by `python Make_Demo.py --DEMO_PRETRAIN=True`
OUTPUT_DIR = DEMO_DIR  # adapted SPDNet, logs, results and pictures next to the world
COCO_DIR = DEMO_DIR + "/data/coco"
COCO_RAIN_DIR = DEMO_DIR + "/data/coco_rain"
DETECTOR = DEMO_WEIGHTS_DIR + "/detector"  # stands in for PekingU/rtdetr_r18vd
SPDNET_WEIGHTS = DEMO_WEIGHTS_DIR + "/spdnet_original.pt"  # stands in for the official SPDNet weights
GATE_WEIGHTS = DEMO_DIR + "/utility_gate.pt"  # the detector-view gate Training_Utility_Gate.py trains (the rain gate
#   Make_Demo.py trains: DEMO_DIR + "/demo_gate/rain_detector.pt")
SPDNET_N_FEATS = 16  # the demo SPDNet's size (also recorded in its weights file)
SPDNET_N_RESBLOCKS = 1
IMAGE_SIZE = 128
PERCENT_DATASET = 25  # 500 of the 2,000 rainy training scenes: one pass of 63 steps
VAL_PERCENT = 100
NUM_EPOCHS = 1
BATCH_SIZE = 8
GRADIENT_ACCUMULATION_STEPS = 1
WARMUP_STEPS = 5
CHECKPOINT_EVERY_STEPS = 25
LOG_EVERY_STEPS = 5
CPU_THREADS = 1  # every demo run on one thread: the README's table repeats bit for bit on any core count
#   (same CPU kernels)
DETECTION_LOSS_WEIGHT = 1.0  # the method's own objective, which the README's demo table measures
FEATURE_LOSS_WEIGHT = 0.0  # (the script's default adds the feature loss and clean images: docs/objectives.md
PIXEL_LOSS_WEIGHT = 0.0  #  compares both on this world)
COCO_RATIO = 0.0  # rainy training images only
PRECISION = "fp32"  # the demo's figures in fp32 on every CPU ("auto" would take bf16 where the CPU has AVX512-BF16)
GRADIENT_CHECKPOINTING = False  # 128 px images fit easily; recomputation would only cost time
DATALOADER_WORKERS = 1
EVAL_BEFORE_TRAINING = False  # Eval_SPDNet_Adaptation.py scores the original SPDNet anyway
# The detector-view gate's recipe (Training_Utility_Gate.py), as tools/family_table.py trains it; the rain
# gate's (Training_Rain_Detector.py) is configs/demo_rain_gate.py, read after this file
ARCHITECTURE = "detector_view"  # a small head on the frozen detector's encoder features
GATE_PERCENT_DATASET = 25  # 500 training scenes, half shown clean, half rainy
GATE_VAL_PERCENT = 100
GATE_NUM_EPOCHS = 2
GATE_BATCH_SIZE = 32
GATE_LEARNING_RATE = 1e-3

# A demo world holding every rain family, for the leave-one-family-out table (tools/family_table.py):
#   python Make_Demo.py configs/demo.py configs/demo_families.py
# Its coco_rain/ holds one variant folder per preset (medium_v0, drops_heavy_v0, downpour_medium_v0), each
# recording its preset, so HOLDOUT_FAMILY picks a family's variants out of COCO_RAIN_DIR.
DEMO_RAIN_PRESETS = ["medium", "drops_heavy", "downpour_medium"]  # streaks, drops, downpour
DEMO_DIR = "./outputs_spdnet_adaptation/demo_families"
OUTPUT_DIR = DEMO_DIR
COCO_DIR = DEMO_DIR + "/data/coco"
COCO_RAIN_DIR = DEMO_DIR + "/data/coco_rain"
GATE_WEIGHTS = DEMO_DIR + "/demo_gate/rain_detector.pt"

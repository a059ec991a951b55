# A second demo world, with another seed (scenes, rain and gate; the same kept detector and SPDNet):
#   python Make_Demo.py configs/demo_world1.py
#   python Training_SPDNet_Adaptation.py configs/demo.py configs/demo_world1.py   (and the two evaluations alike)
DEMO_SEED = 1
DEMO_DIR = "./outputs_spdnet_adaptation/demo_world1"
OUTPUT_DIR = DEMO_DIR
COCO_DIR = DEMO_DIR + "/data/coco"
COCO_RAIN_DIR = DEMO_DIR + "/data/coco_rain"
GATE_WEIGHTS = DEMO_DIR + "/demo_gate/rain_detector.pt"

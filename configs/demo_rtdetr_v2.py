# The CPU demo with a second detector family: the kept RT-DETRv2 stand-in (demo_weights/detector_rt_detr_v2,
# made by `python Make_Demo.py --DEMO_PRETRAIN=True --DEMO_DETECTOR_FAMILY=rt_detr_v2`) in place of RT-DETR,
# on demo world 0's scenes and rain (built again in its own folder, with its own gate):
#   python Make_Demo.py configs/demo.py configs/demo_rtdetr_v2.py
#   python Training_SPDNet_Adaptation.py configs/demo.py configs/demo_rtdetr_v2.py
#   python Eval_SPDNet_Adaptation.py configs/demo.py configs/demo_rtdetr_v2.py
#   python Eval_conditional.py configs/demo.py configs/demo_rtdetr_v2.py
DEMO_DETECTOR_FAMILY = "rt_detr_v2"
DETECTOR = "./demo_weights/detector_rt_detr_v2"  # stands in for PekingU/rtdetr_v2_r18vd
DEMO_DIR = "./outputs_spdnet_adaptation/demo_rtdetr_v2"
OUTPUT_DIR = DEMO_DIR
COCO_DIR = DEMO_DIR + "/data/coco"
COCO_RAIN_DIR = DEMO_DIR + "/data/coco_rain"
GATE_WEIGHTS = DEMO_DIR + "/demo_gate/rain_detector.pt"

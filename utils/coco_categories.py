"""COCO 2017's 80 object categories: dataset ids 1..90 (with gaps) and their names.

The names are the ones PekingU's RT-DETR checkpoints use in ``config.id2label`` (index 0 'person'
... index 79 'toothbrush'), so the two can be matched by name in ``utils.detector.coco_label_maps``.
"""

COCO_CATEGORIES = [
    {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
    {"id": 4, "name": "motorcycle"}, {"id": 5, "name": "airplane"}, {"id": 6, "name": "bus"},
    {"id": 7, "name": "train"}, {"id": 8, "name": "truck"}, {"id": 9, "name": "boat"},
    {"id": 10, "name": "traffic light"}, {"id": 11, "name": "fire hydrant"}, {"id": 13, "name": "stop sign"},
    {"id": 14, "name": "parking meter"}, {"id": 15, "name": "bench"}, {"id": 16, "name": "bird"},
    {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 19, "name": "horse"},
    {"id": 20, "name": "sheep"}, {"id": 21, "name": "cow"}, {"id": 22, "name": "elephant"},
    {"id": 23, "name": "bear"}, {"id": 24, "name": "zebra"}, {"id": 25, "name": "giraffe"},
    {"id": 27, "name": "backpack"}, {"id": 28, "name": "umbrella"}, {"id": 31, "name": "handbag"},
    {"id": 32, "name": "tie"}, {"id": 33, "name": "suitcase"}, {"id": 34, "name": "frisbee"},
    {"id": 35, "name": "skis"}, {"id": 36, "name": "snowboard"}, {"id": 37, "name": "sports ball"},
    {"id": 38, "name": "kite"}, {"id": 39, "name": "baseball bat"}, {"id": 40, "name": "baseball glove"},
    {"id": 41, "name": "skateboard"}, {"id": 42, "name": "surfboard"}, {"id": 43, "name": "tennis racket"},
    {"id": 44, "name": "bottle"}, {"id": 46, "name": "wine glass"}, {"id": 47, "name": "cup"},
    {"id": 48, "name": "fork"}, {"id": 49, "name": "knife"}, {"id": 50, "name": "spoon"},
    {"id": 51, "name": "bowl"}, {"id": 52, "name": "banana"}, {"id": 53, "name": "apple"},
    {"id": 54, "name": "sandwich"}, {"id": 55, "name": "orange"}, {"id": 56, "name": "broccoli"},
    {"id": 57, "name": "carrot"}, {"id": 58, "name": "hot dog"}, {"id": 59, "name": "pizza"},
    {"id": 60, "name": "donut"}, {"id": 61, "name": "cake"}, {"id": 62, "name": "chair"},
    {"id": 63, "name": "couch"}, {"id": 64, "name": "potted plant"}, {"id": 65, "name": "bed"},
    {"id": 67, "name": "dining table"}, {"id": 70, "name": "toilet"}, {"id": 72, "name": "tv"},
    {"id": 73, "name": "laptop"}, {"id": 74, "name": "mouse"}, {"id": 75, "name": "remote"},
    {"id": 76, "name": "keyboard"}, {"id": 77, "name": "cell phone"}, {"id": 78, "name": "microwave"},
    {"id": 79, "name": "oven"}, {"id": 80, "name": "toaster"}, {"id": 81, "name": "sink"},
    {"id": 82, "name": "refrigerator"}, {"id": 84, "name": "book"}, {"id": 85, "name": "clock"},
    {"id": 86, "name": "vase"}, {"id": 87, "name": "scissors"}, {"id": 88, "name": "teddy bear"},
    {"id": 89, "name": "hair drier"}, {"id": 90, "name": "toothbrush"},
]

COCO_ID2LABEL = {index: category["name"] for index, category in enumerate(COCO_CATEGORIES)}

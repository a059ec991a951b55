"""COCO 2017's 80 object categories: dataset ids 1..90 (with gaps) and their names.

The names are the ones PekingU's RT-DETR checkpoints use in ``config.id2label`` (index 0 'person'
... index 79 'toothbrush'), so the two can be matched by name: ``coco_label_maps``, the one place
where a detector's labels and a dataset's category ids meet.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from utils.runtime.errors import DataError

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


# Names HF checkpoints give to label indices that are no class (DETR's and Conditional DETR's COCO
# heads keep COCO's 91 ids, the gaps named "N/A"): such a label has no category and is never matched.
PLACEHOLDER_NAMES = frozenset({"n/a"})


def _normalise_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def placeholder_labels(id2label: Mapping[int, str]) -> frozenset[int]:
    """The detector's label indices named as placeholders ("N/A"): no class, never scored."""
    return frozenset(int(label) for label, name in id2label.items() if _normalise_name(name) in PLACEHOLDER_NAMES)


def coco_label_maps(
    id2label: Mapping[int, str], categories: Iterable[Mapping] | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """Match dataset category ids to the detector's contiguous label indices by name.

    Args:
        id2label: the detector's ``config.id2label`` (label index -> name; keys may be str in JSON).
        categories: the annotation file's ``categories`` list (``[{"id": .., "name": ..}, ...]``);
            COCO 2017's 80 categories when omitted.

    Returns:
        ``(category_id_to_label, label_to_category_id)``. Dataset categories the detector does not know
        are left out of ``category_id_to_label`` (their boxes cannot be learned or scored), but every
        detector label must match exactly one category, else a ``ValueError`` names the culprits;
        placeholder labels ("N/A", ``placeholder_labels``) match none and are left out of both maps.
    """
    categories = list(COCO_CATEGORIES if categories is None else categories)
    name_to_category: dict[str, int] = {}
    for category in categories:
        if "id" not in category or "name" not in category:
            raise DataError(f"category entry {category!r} needs both 'id' and 'name'")
        key = _normalise_name(category["name"])
        if key in name_to_category:
            raise DataError(f"category name {category['name']!r} appears twice in the annotation categories")
        name_to_category[key] = int(category["id"])

    label_to_category_id: dict[int, int] = {}
    unmatched = []
    placeholders = placeholder_labels(id2label)
    for label, name in sorted(((int(k), v) for k, v in id2label.items())):
        if label in placeholders:
            continue
        category_id = name_to_category.get(_normalise_name(name))
        if category_id is None:
            unmatched.append(f"{label}: {name!r}")
        else:
            label_to_category_id[label] = category_id
    if unmatched:
        known = ", ".join(repr(c["name"]) for c in categories[:10])
        raise DataError(
            f"detector labels with no dataset category of the same name: {', '.join(unmatched)}. "
            f"The annotation categories are {known}{', ...' if len(categories) > 10 else ''}. "
            "Use a detector trained on these classes, or annotations whose category names match it."
        )
    labels = sorted(int(label) for label in id2label)
    if labels != list(range(len(labels))):
        raise DataError(f"detector labels must be contiguous 0..{len(labels) - 1}, got {labels}")
    category_id_to_label = {category_id: label for label, category_id in label_to_category_id.items()}
    return category_id_to_label, label_to_category_id

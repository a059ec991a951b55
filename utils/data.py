"""COCO and COCO_rain: the dataset every script reads, real COCO and the synthetic demo world alike.

Layout (COCO_RAIN_DIR mirrors COCO_DIR, rainy images under the same file names)::

    COCO_DIR/train2017/*.jpg  COCO_DIR/val2017/*.jpg  COCO_DIR/annotations/instances_{train,val}2017.json
    COCO_RAIN_DIR/train2017/*.jpg  COCO_RAIN_DIR/val2017/*.jpg          (one rain variant), or
    COCO_RAIN_DIR/<variant>/{train,val}2017/*.jpg                         (several, e.g. light_v0, heavy_v1),
    or a list of directories, one per variant.

A sample is ``(image, target)``: image (3, S, S) float in 0-1, a plain resize of the whole picture
to S x S as RTDetrImageProcessor does (no normalisation); target a dict with ``class_labels`` (N,)
int64 (the detector's contiguous labels), ``boxes`` (N, 4) normalised cx, cy, w, h, ``image_id``,
``orig_size`` (h, w), ``is_rainy``, ``variant`` and, with ``return_clean_pair``, ``clean_image``.

Decoding: PIL, which leaves EXIF orientation alone. COCO's boxes are annotated on the stored pixel
grid (cocoapi and the official tools never apply EXIF rotation; the annotation's width and height are
the stored ones), so applying the EXIF rotation would misplace every box of a rotated photo.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Mapping, Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from utils.detector import coco_label_maps

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}


def annotation_path(coco_dir: str, split: str) -> str:
    return os.path.join(coco_dir, "annotations", f"instances_{SPLIT_FOLDERS[split]}.json")


def rain_variant_dirs(coco_rain_dir: str | Sequence[str], split: str) -> list[str]:
    """The image folders of every rain variant for ``split``, checked to exist.

    ``coco_rain_dir`` is a directory with ``{split}2017/`` (one variant), a directory whose
    sub-directories each have it (several variants, sorted by name), or a list of directories.
    """
    folder = SPLIT_FOLDERS[split]
    if isinstance(coco_rain_dir, (list, tuple)):
        roots = list(coco_rain_dir)
    else:
        if not os.path.isdir(coco_rain_dir):
            raise FileNotFoundError(f"COCO_RAIN_DIR {coco_rain_dir!r} does not exist")
        if os.path.isdir(os.path.join(coco_rain_dir, folder)):
            roots = [coco_rain_dir]
        else:
            roots = sorted(
                os.path.join(coco_rain_dir, name) for name in os.listdir(coco_rain_dir)
                if os.path.isdir(os.path.join(coco_rain_dir, name, folder))
            )
            if not roots:
                raise FileNotFoundError(
                    f"COCO_RAIN_DIR {coco_rain_dir!r} has neither {folder}/ nor variant folders containing {folder}/"
                )
    dirs = [os.path.join(root, folder) for root in roots]
    for directory in dirs:
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"rainy image folder {directory!r} does not exist")
    return dirs


def stable_hash(*values) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def load_rgb(path: str, draft_size: int | None = None) -> Image.Image:
    """Decode any PIL mode (L, CMYK, RGBA, P, ...) to RGB; JPEGs decode straight at >= draft_size."""
    image = Image.open(path)
    if draft_size is not None and image.format == "JPEG":
        # DCT scaling: decoding at 1/2, 1/4 or 1/8 is much faster and stays >= the requested size.
        image.draft("RGB", (draft_size, draft_size))
    return image.convert("RGB")


class CocoRainDataset(torch.utils.data.Dataset):
    """Clean and/or rainy COCO-layout images with HF detection targets. See the module docstring."""

    def __init__(
        self,
        coco_dir: str,
        coco_rain_dir: str | Sequence[str] | None,
        split: str,
        id2label: Mapping[int, str] | None,
        image_size: int = 640,
        train: bool = False,
        percent: float = 100.0,
        coco_ratio: float = 0.0,
        rain_ratio: float = 1.0,
        seed: int = 42,
        return_clean_pair: bool = False,
    ):
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {percent}")
        if coco_ratio < 0 or rain_ratio < 0 or coco_ratio + rain_ratio <= 0:
            raise ValueError(f"coco_ratio and rain_ratio must be >= 0 with a positive sum, got {coco_ratio}, {rain_ratio}")
        self.split, self.image_size, self.train, self.seed = split, image_size, train, seed
        self.return_clean_pair = return_clean_pair
        if not os.path.isdir(coco_dir):
            raise FileNotFoundError(f"COCO_DIR {coco_dir!r} does not exist")
        self.clean_dir = os.path.join(coco_dir, SPLIT_FOLDERS[split])
        if not os.path.isdir(self.clean_dir):
            raise FileNotFoundError(f"clean image folder {self.clean_dir!r} does not exist")
        self.annotation_file = annotation_path(coco_dir, split)
        if not os.path.isfile(self.annotation_file):
            raise FileNotFoundError(f"annotation file {self.annotation_file!r} does not exist")
        with open(self.annotation_file) as file:
            try:
                coco = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"annotation file {self.annotation_file!r} is not valid JSON: {error}") from error
        for key in ("images", "annotations", "categories"):
            if key not in coco:
                raise ValueError(f"annotation file {self.annotation_file!r} has no {key!r} list")

        if id2label is None:  # labels unused (e.g. the rain gate): the file's own categories, in order
            id2label = {index: category["name"] for index, category in enumerate(coco["categories"])}
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.category_id_to_label, self.label_to_category_id = coco_label_maps(self.id2label, coco["categories"])

        images = sorted(coco["images"], key=lambda image: image["id"])
        self.images = {image["id"]: image for image in images}
        self.annotations: dict[int, list] = {image["id"]: [] for image in images}
        for annotation in coco["annotations"]:
            if annotation["image_id"] in self.annotations:
                self.annotations[annotation["image_id"]].append(annotation)

        if rain_ratio > 0 and coco_rain_dir is None:
            raise ValueError("rain_ratio > 0 needs COCO_RAIN_DIR")
        self.rain_dirs = rain_variant_dirs(coco_rain_dir, split) if rain_ratio > 0 else []
        self.samples = self._choose_samples([image["id"] for image in images], percent, coco_ratio, rain_ratio)
        self._check_files_exist()
        # Shared with DataLoader workers (persistent ones too): the epoch drives rain variant and flip.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.unreadable = torch.zeros((), dtype=torch.int64).share_memory_()

    def _choose_samples(self, image_ids: list[int], percent: float, coco_ratio: float, rain_ratio: float):
        """(image_id, is_rainy) pairs: ``percent`` % of the images, seeded; ``coco_ratio`` of them clean,
        ``rain_ratio`` rainy (the two parts overlap only when the ratios sum to more than 1)."""
        generator = torch.Generator().manual_seed(self.seed)
        order = [image_ids[i] for i in torch.randperm(len(image_ids), generator=generator).tolist()]
        chosen = order[: max(1, round(len(order) * percent / 100))] if order else []
        n_clean = min(len(chosen), round(len(chosen) * coco_ratio))
        n_rainy = min(len(chosen), round(len(chosen) * rain_ratio))
        samples = [(image_id, False) for image_id in chosen[:n_clean]]
        samples += [(image_id, True) for image_id in chosen[len(chosen) - n_rainy :]]
        return sorted(samples)

    def _check_files_exist(self) -> None:
        """Every listed clean image, and every rainy one in every variant, must exist (a cheap stat)."""
        for image_id, is_rainy in self.samples:
            file_name = self.images[image_id]["file_name"]
            folders = self.rain_dirs if is_rainy else []
            if not is_rainy or self.return_clean_pair:
                folders = [self.clean_dir, *folders]
            for folder in folders:
                path = os.path.join(folder, file_name)
                if not os.path.isfile(path):
                    kind = "rainy image" if folder != self.clean_dir else "image"
                    raise FileNotFoundError(f"{kind} {path!r} is listed in {self.annotation_file} but missing")

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's rain variants and flips (seen by persistent workers too)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        rainy = sum(is_rainy for _, is_rainy in self.samples)
        variants = f", {len(self.rain_dirs)} rain variants" if len(self.rain_dirs) > 1 else ""
        return f"{rainy:,} rainy + {len(self.samples) - rainy:,} clean{variants}"

    def variant_of(self, image_id: int, epoch: int) -> int:
        """The rain variant an image shows in an epoch: a function of (seed, epoch, image) only."""
        return stable_hash("variant", self.seed, epoch, image_id) % max(1, len(self.rain_dirs))

    def flips(self, image_id: int, epoch: int) -> bool:
        return self.train and stable_hash("flip", self.seed, epoch, image_id) % 2 == 1

    def targets_of(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training targets in original pixels: boxes (N, 4) x, y, w, h and labels (N,).

        Crowd regions, categories the detector lacks, and boxes with no area inside the image are
        left out (COCOeval still sees them all through the annotation file).
        """
        info = self.images[image_id]
        boxes, labels = [], []
        for annotation in self.annotations[image_id]:
            if annotation.get("iscrowd", 0) or annotation["category_id"] not in self.category_id_to_label:
                continue
            x, y, w, h = annotation["bbox"]
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(info["width"]), x + w), min(float(info["height"]), y + h)
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                continue
            boxes.append([x0, y0, x1 - x0, y1 - y0])
            labels.append(self.category_id_to_label[annotation["category_id"]])
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)

    def _load(self, path: str) -> torch.Tensor:
        with load_rgb(path, draft_size=self.image_size) as image:
            return TF.pil_to_tensor(image)

    def __getitem__(self, index: int):
        image_id, is_rainy = self.samples[index]
        info = self.images[image_id]
        epoch = int(self._epoch)
        variant = self.variant_of(image_id, epoch) if is_rainy else -1
        path = os.path.join(self.rain_dirs[variant] if is_rainy else self.clean_dir, info["file_name"])
        try:
            image = self._load(path)
            clean = self._load(os.path.join(self.clean_dir, info["file_name"])) if self.return_clean_pair else None
        except (OSError, SyntaxError, ValueError) as error:
            # Never a crash hours in: report, count, and let the collate function drop the sample.
            self.unreadable += 1
            print(f"warning: skipping unreadable image {path}: {error}", file=sys.stderr, flush=True)
            return None

        xywh, labels = self.targets_of(image_id)
        height, width = int(info["height"]), int(info["width"])
        boxes = tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=(height, width))
        size = [self.image_size, self.image_size]
        # Decoding may have used JPEG draft scaling, so the image is resized from whatever it is; the
        # boxes from the annotation's size. Both end on the same S x S canvas.
        image, boxes = TF.resize(image, size, antialias=True), TF.resize(boxes, size)
        if clean is not None:
            clean = TF.resize(clean, size, antialias=True)
        if self.flips(image_id, epoch):
            image, boxes = TF.horizontal_flip(image), TF.horizontal_flip(boxes)
            clean = TF.horizontal_flip(clean) if clean is not None else None
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
        target = {
            "class_labels": labels,
            "boxes": boxes.as_subclass(torch.Tensor) / self.image_size,
            "image_id": image_id,
            "orig_size": torch.tensor([height, width]),
            "is_rainy": is_rainy,
            "variant": variant,
        }
        if clean is not None:
            target["clean_image"] = clean.float() / 255.0
        return image.float() / 255.0, target


# The factory name the scripts use (DETR's build_dataset); the class takes the same arguments.
build_dataset = CocoRainDataset


def collate_fn(batch: list):
    """Samples -> (images (B, 3, S, S), [target, ...]); unreadable samples (None) are dropped.

    Returns None when every sample of the batch was unreadable.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        return None
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def loader_settings(workers: int, device: torch.device) -> dict:
    """DataLoader keyword arguments that keep an accelerator fed."""
    settings = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        settings.update(persistent_workers=True, prefetch_factor=4)
    return settings


def check_split(dataset: CocoRainDataset, show_progress: bool = True) -> list[str]:
    """Fully decode every file the dataset can read (clean and every rain variant): the problems found."""
    from tqdm import tqdm

    problems = []
    image_ids = sorted({image_id for image_id, _ in dataset.samples})
    folders = [dataset.clean_dir, *dataset.rain_dirs]
    for image_id in tqdm(image_ids, desc=f"checking {dataset.split}", disable=not show_progress, dynamic_ncols=True):
        info = dataset.images[image_id]
        for folder in folders:
            path = os.path.join(folder, info["file_name"])
            try:
                with Image.open(path) as image:
                    image.load()
                    if folder == dataset.clean_dir and image.size != (info["width"], info["height"]):
                        problems.append(
                            f"{path}: stored size {image.size[0]}x{image.size[1]} differs from the annotation's "
                            f"{info['width']}x{info['height']}"
                        )
            except FileNotFoundError:
                problems.append(f"{path}: missing")
            except (OSError, SyntaxError, ValueError) as error:
                problems.append(f"{path}: unreadable ({error})")
    return problems


def benchmark_loader(dataset: CocoRainDataset, images: int = 200) -> float:
    """Images per second one worker (this process) delivers: decode, resize, targets."""
    count = min(images, len(dataset))
    for index in range(min(5, count)):  # warm the page cache and the allocator
        dataset[index]
    start = time.perf_counter()
    for index in range(count):
        dataset[index]
    return count / (time.perf_counter() - start)

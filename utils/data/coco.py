"""COCO and COCO_rain: the dataset every script reads, real COCO and the synthetic demo world alike.

Layout (COCO_RAIN_DIR mirrors COCO_DIR, rainy images under the same file names)::

    COCO_DIR/train2017/*.jpg  COCO_DIR/val2017/*.jpg  COCO_DIR/annotations/instances_{train,val}2017.json
    COCO_RAIN_DIR/{train,val}2017/*.jpg                  one rain variant, or
    COCO_RAIN_DIR/<variant>/{train,val}2017/*.jpg        several (e.g. light_v0, heavy_v1: what
                                                         Make_COCO_Rain.py writes), or
    a list of directories (or one string joining them with os.pathsep), one per variant.

A sample is ``(image, target)``: image (3, S, S) float32 in 0-1, a plain resize of the whole picture
to S x S as RTDetrImageProcessor does (no normalisation); target a dict with ``class_labels`` (N,)
int64 (the detector's contiguous labels), ``boxes`` (N, 4) float32 normalised cx, cy, w, h,
``image_id`` int, ``orig_size`` (2,) int64 (h, w), ``is_rainy`` bool, ``variant`` int (index into
``rain_dirs``, -1 for a clean sample) and, with ``return_clean_pair``, ``clean_image`` (3, S, S): the
clean original under the same resize and flip. ``collate_fn`` makes ``(images (B, 3, S, S), [target,
...])``.

Decoding: PIL (JPEG draft mode for large files), which leaves EXIF orientation alone. COCO's boxes
are annotated on the stored pixel grid (cocoapi and the official tools never apply EXIF rotation; the
annotation's width and height are the stored ones), so applying it would misplace every box of a
rotated photo. torchvision.io makes this loader ~1.25x faster but is deprecated since torchvision 0.29
(docs/data.md: measured figures), and PIL reads every mode COCO has.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from contextlib import ExitStack
from multiprocessing import get_context
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from utils.runtime.coco_categories import coco_label_maps
from utils.runtime.errors import DataError, MissingFileError, SettingError

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
# What a broken image file raises in PIL: unidentified or truncated files are OSErrors, some
# corrupt headers SyntaxError or ValueError, absurd dimensions DecompressionBombError.
UNREADABLE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def annotation_path(coco_dir: str, split: str) -> str:
    return os.path.join(coco_dir, "annotations", f"instances_{SPLIT_FOLDERS[split]}.json")


def read_annotation_file(path: str) -> dict:
    """A COCO annotation file, checked to exist, parse, and hold images, annotations and categories."""
    if not os.path.isfile(path):
        raise MissingFileError(f"annotation file {path!r} does not exist")
    with open(path) as file:
        try:
            coco = json.load(file)
        except json.JSONDecodeError as error:
            raise DataError(f"annotation file {path!r} is not valid JSON: {error}") from error
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise DataError(f"annotation file {path!r} has no {key!r} list")
    return coco


def check_data_dirs(coco_dir: str, coco_rain_dir, splits: Sequence[str]) -> None:
    """COCO_DIR's annotation files and COCO_RAIN_DIR's image folders (None: not needed) for ``splits``,
    checked to exist: what a run does before it loads any model."""
    for split in splits:
        if not os.path.isfile(annotation_path(coco_dir, split)):
            raise MissingFileError(
                f"COCO_DIR: {coco_dir!r} has no annotations/instances_{SPLIT_FOLDERS[split]}.json "
                "(COCO's layout: docs/data.md)"
            )
        if coco_rain_dir is not None:
            rain_variant_dirs(coco_rain_dir, split)


def box_problem(bbox, width: int, height: int) -> str | None:
    """Why a COCO ``[x, y, w, h]`` box cannot be trained on in a ``width`` x ``height`` image, or None.

    A box partly outside the image is fine (its visible part is used); a non-finite, empty or
    negative one, or one with no area inside the image, is a problem: it is left out, never clipped.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in bbox
    ):
        return "not four numbers"
    if not all(math.isfinite(value) for value in bbox):
        return "not finite"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "width or height <= 0"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "no area inside the image"
    return None


def report_left_out_boxes(annotation_file: str, left_out: list[str], examples: int = 5) -> None:
    """One warning line on stderr: how many boxes were left out of training, with the first examples."""
    if left_out:
        shown = "; ".join(left_out[:examples]) + ("; ..." if len(left_out) > examples else "")
        print(
            f"warning: {annotation_file}: {len(left_out)} box(es) left out of training (non-finite, negative or "
            f"degenerate): {shown}", file=sys.stderr, flush=True,
        )


def rain_variant_dirs(coco_rain_dir: str | Sequence[str], split: str) -> list[str]:
    """The image folders of every rain variant for ``split``, checked to exist.

    ``coco_rain_dir`` is a directory with ``{split}2017/`` (one variant), a directory whose
    sub-directories each have it (several variants, sorted by name), or a list of directories (also
    as one string joined with ``os.pathsep``, which a str-typed config constant can hold).
    """
    folder = SPLIT_FOLDERS[split]
    if isinstance(coco_rain_dir, str) and os.pathsep in coco_rain_dir:
        coco_rain_dir = [path for path in coco_rain_dir.split(os.pathsep) if path]
    if isinstance(coco_rain_dir, (list, tuple)):
        roots = list(coco_rain_dir)
    else:
        if not os.path.isdir(coco_rain_dir):
            raise MissingFileError(f"COCO_RAIN_DIR {coco_rain_dir!r} does not exist")
        variants = sorted(
            name for name in os.listdir(coco_rain_dir) if os.path.isdir(os.path.join(coco_rain_dir, name, folder))
        )
        direct = os.path.isdir(os.path.join(coco_rain_dir, folder))
        if direct and variants:
            raise DataError(
                f"COCO_RAIN_DIR {coco_rain_dir!r} has both its own {folder}/ and variant folders "
                f"{variants} holding one: ambiguous; point COCO_RAIN_DIR at one of them, or list them"
            )
        if not direct and not variants:
            raise MissingFileError(
                f"COCO_RAIN_DIR {coco_rain_dir!r} has neither {folder}/ nor variant folders containing {folder}/"
            )
        roots = [coco_rain_dir] if direct else [os.path.join(coco_rain_dir, name) for name in variants]
    dirs = [os.path.join(root, folder) for root in roots]
    for directory in dirs:
        if not os.path.isdir(directory):
            raise MissingFileError(f"rainy image folder {directory!r} does not exist")
    return dirs


def stable_hash(*values) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def load_rgb(path: str, draft_size: int | None = None) -> Image.Image:
    """Decode any PIL mode (L, CMYK, RGBA, P, ...) to RGB, EXIF orientation not applied.

    With ``draft_size``, a JPEG decodes straight at 1/2, 1/4 or 1/8 scale (DCT scaling, several
    times faster) while staying at least ``draft_size`` on both sides. Alpha is dropped, as in
    transformers' image processors.
    """
    image = Image.open(path)
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return image if image.mode == "RGB" else image.convert("RGB")


class CocoRainDataset(torch.utils.data.Dataset):
    """Clean and/or rainy COCO-layout images with HF detection targets (shapes: module docstring).

    Args:
        coco_dir: COCO_DIR (``{split}2017/`` and ``annotations/``).
        coco_rain_dir: COCO_RAIN_DIR in any form ``rain_variant_dirs`` takes; unused (may be None)
            when ``rain_ratio`` is 0.
        split: "train" or "val".
        id2label: the detector's ``config.id2label``; categories are matched to it by name
            (``coco_label_maps``). None: the annotation file's categories in order (labels unused).
        image_size: S, the square training size.
        train: horizontal flips, a function of (seed, epoch, image).
        percent: PERCENT_DATASET, % of the split's images, a seeded subset (nested: 10 % of a seed
            is part of its 20 %).
        coco_ratio, rain_ratio: COCO_RATIO of the chosen images appear clean and RAIN_RATIO rainy;
            the two parts are disjoint while the ratios sum to <= 1 (both 1: every image twice).
            ``coco_ratio=1, rain_ratio=0`` is the clean split, ``0, 1`` the rainy one, both with the
            same image ids for the same percent and seed.
        seed: drives the subset, the flips and the per-epoch choice of rain variant.
        return_clean_pair: add each sample's clean original as ``target["clean_image"]``.

    Every file a sample needs is checked to exist (a cheap stat) before any training starts. A file
    that cannot be decoded later is reported on stderr, counted in ``unreadable`` and its sample
    dropped by ``collate_fn``.
    """

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
            raise SettingError(f"percent must be in (0, 100], got {percent}")
        if coco_ratio < 0 or rain_ratio < 0 or coco_ratio + rain_ratio <= 0:
            raise SettingError(f"coco_ratio and rain_ratio must be >= 0 with a positive sum, got {coco_ratio}, "
                               f"{rain_ratio}")
        if rain_ratio > 0 and coco_rain_dir is None:
            raise SettingError("rain_ratio > 0 needs COCO_RAIN_DIR")
        self.split, self.image_size, self.train, self.seed = split, image_size, train, seed
        self.return_clean_pair = return_clean_pair
        if not os.path.isdir(coco_dir):
            raise MissingFileError(f"COCO_DIR {coco_dir!r} does not exist")
        self.clean_dir = os.path.join(coco_dir, SPLIT_FOLDERS[split])
        if not os.path.isdir(self.clean_dir):
            raise MissingFileError(f"clean image folder {self.clean_dir!r} does not exist")
        self.annotation_file = annotation_path(coco_dir, split)
        coco = read_annotation_file(self.annotation_file)

        if id2label is None:
            id2label = {index: category["name"] for index, category in enumerate(coco["categories"])}
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.category_id_to_label, self.label_to_category_id = coco_label_maps(self.id2label, coco["categories"])
        self.rain_dirs = rain_variant_dirs(coco_rain_dir, split) if rain_ratio > 0 else []

        all_ids = sorted(image["id"] for image in coco["images"])
        self.samples = self._choose_samples(all_ids, percent, coco_ratio, rain_ratio)
        # Only what the chosen images need, in small arrays: the full COCO json is gigabytes of Python
        # objects that every DataLoader worker would otherwise copy.
        chosen = {image_id for image_id, _ in self.samples}
        self.images = {
            image["id"]: (image["file_name"], int(image["height"]), int(image["width"]))
            for image in coco["images"] if image["id"] in chosen
        }
        self.targets = self._training_targets(coco["annotations"])
        del coco
        self._check_files_exist()
        # Shared with DataLoader workers, persistent ones too: set_epoch reaches them.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.unreadable = torch.zeros((), dtype=torch.int64).share_memory_()

    def _choose_samples(self, image_ids: list[int], percent: float, coco_ratio: float, rain_ratio: float):
        """Sorted (image_id, is_rainy) pairs: the first ``percent`` % of a seeded permutation, the
        first ``coco_ratio`` of those clean and the last ``rain_ratio`` rainy."""
        generator = torch.Generator().manual_seed(self.seed)
        order = [image_ids[i] for i in torch.randperm(len(image_ids), generator=generator).tolist()]
        chosen = order[: max(1, round(len(order) * percent / 100))] if order else []
        n_clean = min(len(chosen), round(len(chosen) * coco_ratio))
        n_rainy = min(len(chosen), round(len(chosen) * rain_ratio))
        samples = [(image_id, False) for image_id in chosen[:n_clean]]
        samples += [(image_id, True) for image_id in chosen[len(chosen) - n_rainy :]]
        return sorted(samples)

    def _training_targets(self, annotations: list) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """image id -> (boxes (N, 4) float32 x, y, w, h in original pixels, labels (N,) int64).

        Crowd regions and categories the detector lacks are left out (COCOeval still sees them all
        through the annotation file); so are boxes ``box_problem`` finds fault with, reported on
        stderr with their annotation and image ids. A box partly outside the image is clipped to it.
        Images without any annotation keep empty targets.
        """
        boxes: dict[int, list] = {image_id: [] for image_id in self.images}
        labels: dict[int, list] = {image_id: [] for image_id in self.images}
        left_out = []
        for annotation in annotations:
            image_id = annotation["image_id"]
            if image_id not in boxes or annotation.get("iscrowd", 0):
                continue
            label = self.category_id_to_label.get(annotation["category_id"])
            if label is None:
                continue
            _, height, width = self.images[image_id]
            problem = box_problem(annotation["bbox"], width, height)
            if problem is not None:
                left_out.append(f"annotation {annotation.get('id')} of image {image_id} bbox {annotation['bbox']} "
                                f"({problem})")
                continue
            x, y, w, h = annotation["bbox"]
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
            boxes[image_id].append([x0, y0, x1 - x0, y1 - y0])
            labels[image_id].append(label)
        report_left_out_boxes(self.annotation_file, left_out)
        return {
            image_id: (np.asarray(boxes[image_id], np.float32).reshape(-1, 4), np.asarray(labels[image_id], np.int64))
            for image_id in self.images
        }

    def _check_files_exist(self) -> None:
        """Every file a sample can read must exist: its clean image (when shown or paired) and its
        rainy copy in every variant."""
        for image_id, is_rainy in self.samples:
            file_name = self.images[image_id][0]
            folders = self.rain_dirs if is_rainy else []
            if not is_rainy or self.return_clean_pair:
                folders = [self.clean_dir, *folders]
            for folder in folders:
                path = os.path.join(folder, file_name)
                if not os.path.isfile(path):
                    kind = "rainy image" if folder != self.clean_dir else "image"
                    raise MissingFileError(f"{kind} {path!r} is listed in {self.annotation_file} but missing")

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's rain variants and flips. Call it before iterating the loader: it writes
        shared memory, which persistent workers read at every sample."""
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        """The epoch set_epoch last chose (0 before any call)."""
        return int(self._epoch)

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

    def _read(self, path: str, flip: bool) -> torch.Tensor:
        """(3, S, S) float32 in 0-1: decoded, resized (from whatever size draft decoding gave), flipped."""
        with load_rgb(path, draft_size=self.image_size) as image:
            pixels = TF.pil_to_tensor(image)
        pixels = TF.resize(pixels, [self.image_size, self.image_size], antialias=True)
        if flip:
            pixels = TF.horizontal_flip(pixels)
        # The uint8 resize returns channels-last strides: converting after .contiguous() is 2x faster.
        return pixels.contiguous().to(torch.float32).div_(255.0)

    def __getitem__(self, index: int):
        return self.load(index)

    def load(self, index: int, fresh_rain: bool = False):
        """Sample ``index``. ``fresh_rain``: a rainy sample's image is its clean original, for the caller
        to rain on (``utils/data/random_rain.py``), instead of a rendered variant (no variant file is
        read; ``variant`` -1, ``is_rainy`` stays True); a clean sample is unaffected."""
        image_id, is_rainy = self.samples[index]
        file_name, height, width = self.images[image_id]
        epoch = int(self._epoch)
        from_variant = is_rainy and not fresh_rain
        variant = self.variant_of(image_id, epoch) if from_variant else -1
        flip = self.flips(image_id, epoch)
        path = os.path.join(self.rain_dirs[variant] if from_variant else self.clean_dir, file_name)
        try:
            image = clean = self._read(path, flip)
            if self.return_clean_pair and from_variant:
                path = os.path.join(self.clean_dir, file_name)
                clean = self._read(path, flip)
        except UNREADABLE_ERRORS as error:
            # Never a crash hours in: report, count, and let collate_fn drop the sample.
            self.unreadable += 1
            print(f"warning: skipping unreadable image {path}: {error}", file=sys.stderr, flush=True)
            return None

        xywh, labels = self.targets[image_id]
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(xywh), format="XYWH", canvas_size=(height, width))
        boxes = TF.resize(boxes, [self.image_size, self.image_size])
        if flip:
            boxes = TF.horizontal_flip(boxes)
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
        target = {
            "class_labels": torch.from_numpy(labels),
            "boxes": boxes.as_subclass(torch.Tensor) / self.image_size,
            "image_id": image_id,
            "orig_size": torch.tensor([height, width]),
            "is_rainy": is_rainy,
            "variant": variant,
        }
        if self.return_clean_pair:
            target["clean_image"] = clean
        return image, target


# The factory name the scripts use (DETR's build_dataset); the class takes the same arguments.
build_dataset = CocoRainDataset


def collate_fn(batch: list):
    """Samples -> (images (B, 3, S, S), [target, ...]); unreadable samples (None) are dropped.

    Returns None when every sample of the batch was unreadable. Clean pairs stay in the targets:
    ``torch.stack([t["clean_image"] for t in targets])``.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        return None
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def non_empty(batches):
    """The batches of a loader that collate_fn did not make None (every image unreadable): the one
    place every loop skips them."""
    return (batch for batch in batches if batch is not None)


def loader_settings(workers: int, device: torch.device) -> dict:
    """DataLoader keyword arguments that keep an accelerator fed: ``workers`` processes that stay
    alive across epochs (set_epoch still reaches them) with 4 batches each in flight, pinned memory
    for asynchronous host-to-GPU copies."""
    settings = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        settings.update(persistent_workers=True, prefetch_factor=4)
    return settings


def check_file(path: str, expected_size: tuple[int, int]) -> str | None:
    """Fully decode one file: None if fine, else the problem (missing, unreadable, wrong size)."""
    try:
        with load_rgb(path) as image:
            image.load()
            if image.size != expected_size:
                return (
                    f"{path}: stored size {image.size[0]}x{image.size[1]} differs from the annotation's "
                    f"{expected_size[0]}x{expected_size[1]}"
                )
    except FileNotFoundError:
        return f"{path}: missing"
    except UNREADABLE_ERRORS as error:
        return f"{path}: unreadable ({type(error).__name__}: {error})"
    return None


def _check_job(job: tuple) -> str | None:
    return check_file(*job)


def check_split(dataset: CocoRainDataset, workers: int | None = None, show_progress: bool = True) -> list[str]:
    """Fully decode every file the dataset can read (clean and every rain variant): the problems found.

    Every file must decode and have the annotation's width x height (the boxes live on that grid).
    ``workers``: processes, None = one per CPU core, 0 = this process only.
    """
    folders = [dataset.clean_dir, *dataset.rain_dirs]
    jobs = [
        (os.path.join(folder, file_name), (width, height))
        for file_name, height, width in (dataset.images[i] for i in sorted(dataset.images))
        for folder in folders
    ]
    workers = (os.cpu_count() or 1) if workers is None else workers
    problems = []
    with ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(get_context().Pool(workers))
            results = pool.imap(_check_job, jobs, chunksize=64)
        else:
            results = map(_check_job, jobs)
        for problem in tqdm(results, total=len(jobs), desc=f"checking {dataset.split}", unit="file",
                            disable=not show_progress, dynamic_ncols=True):
            if problem is not None:
                problems.append(problem)
    return problems


def benchmark_loader(dataset: CocoRainDataset, images: int = 200) -> float:
    """Images per second one worker (this process) delivers: decode, resize, flip, targets."""
    count = min(images, len(dataset))
    for index in range(min(5, count)):  # warm the page cache and the allocator
        dataset[index]
    start = time.perf_counter()
    for index in range(count):
        dataset[index]
    return count / (time.perf_counter() - start)

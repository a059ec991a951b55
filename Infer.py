"""Run the conditional model on your own photos: one image or a folder.

    python Infer.py --INPUT=street.jpg
    python Infer.py --INPUT=./my_photos --OUTPUT=./my_photos_detected
    python Infer.py configs/demo.py --INPUT=outputs_spdnet_adaptation/demo/data/coco_rain/val2017

Writes one annotated image per input and detections.json (label names, scores, boxes in original
pixels as x0, y0, x1, y1, the gate's probability and which path the image took). The probability is
named rain_probability for every gate: P(SPDNet helps the detector here) for the default detector-view
gate, P(rain) for a rain gate.
"""

from __future__ import annotations

from utils.runtime import settings  # the shared defaults (utils/runtime/settings.py)

# ---- input and output
INPUT = "./images"  # an image file or a folder of images
OUTPUT = None  # where annotated images and detections.json go (None: OUTPUT_DIR/inference)
SCORE_THRESHOLD = 0.5  # detections below this score are left out
IMAGE_SIZE = settings.IMAGE_SIZE  # the model's square input size (multiple of 32)
# ---- models
DETECTOR = "PekingU/rtdetr_r18vd"  # hub id or local directory of the frozen detector
ADAPTED_WEIGHTS = None  # adapted SPDNet (None: OUTPUT_DIR/spdnet_adapted.pt)
GATE_WEIGHTS = None  # the gate (None: OUTPUT_DIR/utility_gate.pt, Training_Utility_Gate.py's detector-view gate,
#   the one that carries to weather it never trained on: docs/unseen_rain.md); a rain gate routes the same
#   (OUTPUT_DIR/rain_detector.pt, Training_Rain_Detector.py); "confidence_rule": the label-free baseline
SPDNET_N_FEATS = 32  # SPDNet width, when the weights file does not record it
SPDNET_N_RESBLOCKS = 3  # SPDNet blocks, when the weights file does not record it
ROUTING = "hard"  # "hard": gated-rainy images see SPDNet(x); "soft": g * SPDNet(x) + (1 - g) * x, g: calibrated P(rain)
# ---- run
PRECISION = "fp32"  # "fp32" or "bf16" (SPDNet in bf16 autocast; the detector always runs in fp32)
DEVICE = settings.DEVICE  # "auto", "cuda", "cpu", ...
OUTPUT_DIR = settings.OUTPUT_DIR  # where the trained weights are

from utils.runtime.config import command_line, load_config  # noqa: E402
from utils.runtime.errors import DataError, MissingFileError  # noqa: E402

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: str) -> list[str]:
    """INPUT's images: the file itself (checked to be an image) or a folder's image files."""
    import os

    if os.path.isfile(path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path):
                pass
        except (OSError, UnidentifiedImageError):
            raise DataError(f"INPUT: {path!r} is not an image file ({', '.join(_IMAGE_SUFFIXES)})") from None
        return [path]
    if not os.path.isdir(path):
        raise MissingFileError(f"INPUT: {path!r} is neither an image file nor a folder")
    files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.lower().endswith(_IMAGE_SUFFIXES))
    if not files:
        raise MissingFileError(f"INPUT: folder {path!r} has no images ({', '.join(_IMAGE_SUFFIXES)})")
    return files


def main(argv: list[str] | None = None) -> list[dict]:
    config = load_config(globals(), argv)
    # The library (and torch) loads only now, after the settings are checked: a bad one fails at once.
    import os

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from tqdm import tqdm

    from utils.runtime.checkpoint import atomic_write_json, write_atomically
    from utils.apps.pipelines import build_conditional_model
    from utils.runtime.device import autocast, choose_device
    from utils.apps.visualize import draw_detections

    files = list_images(config["INPUT"])
    output = config["OUTPUT"] or os.path.join(config["OUTPUT_DIR"], "inference")
    device = choose_device(config["DEVICE"])
    model = build_conditional_model(config, device, config["ROUTING"])
    os.makedirs(output, exist_ok=True)
    id2label = model.integrated.detector.config.id2label
    records = []
    for path in tqdm(files, desc="images", dynamic_ncols=True):
        try:
            with Image.open(path) as image:
                original = pil_to_tensor(image.convert("RGB")).float() / 255.0
        except OSError as error:
            print(f"skipping {path}: cannot read it ({error})")
            continue
        height, width = original.shape[-2:]
        resized = F.interpolate(original[None], size=(config["IMAGE_SIZE"],) * 2, mode="bilinear", align_corners=False,
                                antialias=True)
        with torch.inference_mode(), autocast(device, config["PRECISION"]):
            outputs = model(resized.clamp(0, 1).to(device))
        (detection,) = model.integrated.adapter.post_process(outputs.logits, outputs.pred_boxes, [(height, width)])
        keep = detection["scores"] >= config["SCORE_THRESHOLD"]
        name = os.path.splitext(os.path.basename(path))[0]
        drawn = draw_detections(original, detection, id2label, config["SCORE_THRESHOLD"])
        picture = Image.fromarray(drawn.permute(1, 2, 0).numpy())
        write_atomically(os.path.join(output, f"{name}_detected.png"), lambda file: picture.save(file, format="PNG"))
        records.append({
            "file": path,
            "rain_probability": float(outputs.rain_probability[0]),
            "path": "derained" if bool(outputs.derained[0]) else "direct",
            "detections": [
                {"label": id2label[int(label)], "score": round(float(score), 4),
                 "box_xyxy": [round(float(v), 1) for v in box]}
                for label, score, box in zip(detection["labels"][keep], detection["scores"][keep],
                                             detection["boxes"][keep])
            ],
        })
    if not records:
        raise DataError(f"INPUT: none of the {len(files)} image files in {config['INPUT']!r} could be read")
    atomic_write_json(os.path.join(output, "detections.json"), records)
    print(f"{len(records)} images -> {output} (annotated PNGs and detections.json)")
    return records


if __name__ == "__main__":
    command_line(main)

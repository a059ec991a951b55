"""How close PRECISION="bf16" is to fp32 for the gradient SPDNet learns from, and why "cosine > 0.99"
is the wrong yardstick for it.

    python -m benchmarks.bench_precision                                          # ~1 min on a CPU
    python -m benchmarks.bench_precision --DETECTOR_STEPS=800                     # a better trained detector (~2 min)
    python -m benchmarks.bench_precision --DETECTOR_STEPS=300 --IMAGE_SIZE=128    # larger images (~2 min)

Builds a tiny synthetic world in a temporary folder, trains a small detector on its clean images and
a small SPDNet with pixel MSE (the demo's trainers), then on BATCHES rainy batches compares SPDNet's
gradient with its fp32 gradient for:
- bf16 as training runs it (SPDNet in bf16 autocast, the detector and loss in fp32);
- the detector in bf16 as well, loss still in fp32 (what the project does not do);
- fp32 with Gaussian noise of NOISE_GREY_LEVELS added to SPDNet's output: fp32's own sensitivity;
- SPDNet's bf16 backward fed the very same upstream gradient as fp32's: SPDNet's own arithmetic,
  next to fp32 SPDNet given that upstream gradient and a rainy input moved by 0.1 grey level;
and against the batch-to-batch spread of the fp32 gradients (SGD's own noise). Prints a table,
writes OUTPUT_DIR/bench_precision.json.
"""

from __future__ import annotations

IMAGE_SIZE = 64  # the world's scenes, the models' training and the comparison run at this size
DETECTOR_STEPS = 60  # training steps of the small detector (more: a detector that depends more on its input)
SPDNET_STEPS = 40  # pixel-MSE steps of the small SPDNet
BATCHES = 4  # rainy batches compared
BATCH_SIZE = 4  # images per batch
NOISE_GREY_LEVELS = [0.1, 0.65]  # Gaussian noise (0-255 scale) added to SPDNet's output in the fp32 sensitivity rows
SEED = 0  # the world, the models and the noise
OUTPUT_DIR = "./outputs_spdnet_adaptation"  # bench_precision.json goes here

import os  # noqa: E402
import tempfile  # noqa: E402

from utils.runtime.checkpoint import atomic_write_json  # noqa: E402
from utils.runtime.config import load_config  # noqa: E402


def measure_batch(config: dict, detector_dir: str, spdnet_path: str, images, labels) -> dict:
    """Every comparison on one batch: fp32 reference first, then each variant against it."""
    import torch

    from utils.apps.precision_study import (NoisyOutput, build_model, cosine, detect_in_bf16, loss_and_gradient,
                                 spdnet_gradient_for_upstream)

    model = build_model(detector_dir, spdnet_path)
    fp32 = loss_and_gradient(model, "fp32", images, labels)
    row = {"loss_fp32": float(fp32.loss), "gradient_fp32": fp32.gradient}

    def compare(name: str, step) -> None:
        row[name] = {"loss_change": float(step.loss / fp32.loss - 1), "cosine": cosine(step.gradient, fp32.gradient),
                     "gradient": step.gradient,
                     "image_grey_levels": float((step.derained - fp32.derained).abs().mean() * 255)}

    compare("bf16", loss_and_gradient(model, "bf16", images, labels))
    detector_too = build_model(detector_dir, spdnet_path)
    detect_in_bf16(detector_too)
    compare("bf16_detector_too", loss_and_gradient(detector_too, "bf16", images, labels))
    for grey_levels in config["NOISE_GREY_LEVELS"]:
        noisy = build_model(detector_dir, spdnet_path)
        noisy.spdnet = NoisyOutput(noisy.spdnet, grey_levels, config["SEED"])
        compare(f"fp32_noise_{grey_levels}", loss_and_gradient(noisy, "fp32", images, labels))

    # The upstream gradient dLoss/dImage at fp32's derained image, fed back through SPDNet in both precisions.
    same_upstream = [spdnet_gradient_for_upstream(model, precision, images, fp32.upstream)
                     for precision in ("fp32", "bf16")]
    row["bf16_spdnet_same_upstream"] = {"cosine": cosine(same_upstream[1], same_upstream[0])}
    # fp32 SPDNet, same upstream gradient, its rainy input moved by 0.1 grey level: SPDNet's own sensitivity.
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(config["SEED"]))
    nudged = spdnet_gradient_for_upstream(model, "fp32", images + 0.1 / 255 * noise, fp32.upstream)
    row["fp32_spdnet_same_upstream_input_noise_0.1"] = {"cosine": cosine(nudged, same_upstream[0])}
    return row


def main(argv: list[str] | None = None) -> dict:
    import time

    import torch

    from utils.apps.precision_study import batch_spread, rainy_batches, train_tiny_pair
    from utils.data.synthetic import build_synthetic_world

    config = load_config(globals(), argv)
    started = time.perf_counter()
    torch.manual_seed(config["SEED"])
    with tempfile.TemporaryDirectory() as root:
        print("building a tiny world and training a small detector and SPDNet ...", flush=True)
        # At least 16 scenes: the small models' trainers draw batches of 8 without repeats.
        num_train = max(16, config["BATCHES"] * config["BATCH_SIZE"])
        world = build_synthetic_world(os.path.join(root, "world"), num_train=num_train,
                                      num_val=2, image_size=config["IMAGE_SIZE"], seed=config["SEED"],
                                      rain_presets=("medium", "heavy"), show_progress=False)
        detector_dir, spdnet_path = train_tiny_pair(world["coco_dir"], world["coco_rain_dir"], root,
                                                    config["IMAGE_SIZE"], num_classes=6,
                                                    detector_steps=config["DETECTOR_STEPS"],
                                                    spdnet_steps=config["SPDNET_STEPS"])
        batches = rainy_batches(world["coco_dir"], world["coco_rain_dir"], detector_dir, config["IMAGE_SIZE"],
                                config["BATCH_SIZE"], config["BATCHES"])
        rows = [measure_batch(config, detector_dir, spdnet_path, *batch) for batch in batches]
    spread = batch_spread([row["gradient_fp32"] for row in rows])
    for row in rows:
        for entry in row.values():
            if isinstance(entry, dict) and "gradient" in entry:
                entry["error_over_spread"] = float((entry.pop("gradient") - row["gradient_fp32"]).norm() / spread)
        del row["gradient_fp32"]
    report = {"config": config, "batches": rows, "seconds": time.perf_counter() - started}
    print_report(report)
    path = atomic_write_json(os.path.join(config["OUTPUT_DIR"], "bench_precision.json"), report)  # makes the folder
    print(f"wrote {path} ({report['seconds']:.0f} s in all)")
    return report


def print_report(report: dict) -> None:
    config, rows = report["config"], report["batches"]
    print(f"\nSPDNet's gradient against fp32's, {len(rows)} rainy batches of {config['BATCH_SIZE']} at "
          f"{config['IMAGE_SIZE']}x{config['IMAGE_SIZE']} (detector trained {config['DETECTOR_STEPS']} steps)")
    header = f"{'variant':<42}{'cosine':>16}{'error / spread':>18}{'loss change':>18}{'image diff (grey)':>20}"
    print(header + "\n" + "-" * len(header))
    names = [name for name, entry in rows[0].items() if isinstance(entry, dict)]
    for name in names:
        entries = [row[name] for row in rows]

        def span(key: str, scale: float = 1.0, digits: int = 3) -> str:
            if key not in entries[0]:
                return "-"
            values = [entry[key] * scale for entry in entries]
            return f"{min(values):.{digits}f}..{max(values):.{digits}f}"

        print(f"{name:<42}{span('cosine'):>16}{span('error_over_spread', digits=2):>18}"
              f"{span('loss_change', 100, 1) + '%' if 'loss_change' in entries[0] else '-':>18}"
              f"{span('image_grey_levels', digits=2):>20}")
    print("error / spread: distance to the fp32 gradient over the RMS spread of the fp32 gradients of the batches")


if __name__ == "__main__":
    main()

"""What the utility gates' targets and the routers cost, side by side in one run.

    python -m benchmarks.bench_routers                                   # the demo's models and sizes
    python -m benchmarks.bench_routers --IMAGE_SIZE=640 --BATCH_SIZE=8   # a real run's size

Times, on one fixed batch of random images, the median of STEPS calls after WARMUP:
- the per-image detector losses behind "gain" targets: one forward per image (as before) against one
  batched forward with each image's loss taken from its slice (``IntegratedModel.per_image_losses``);
- the routers' decision alone: the rain gate (a small CNN on the downscaled image), the detector-view
  gate's head on the frozen detector's encoder features, and the label-free confidence rule (SPDNet and
  two detector passes), next to the frozen detector's own forward.
"""

from __future__ import annotations

DETECTOR = "./demo_weights/detector"  # frozen detector (hub id or directory; the demo's by default)
SPDNET_WEIGHTS = "./demo_weights/spdnet_original.pt"  # the SPDNet the confidence rule runs
SPDNET_N_FEATS = 8  # used when SPDNET_WEIGHTS is None or an official file
SPDNET_N_RESBLOCKS = 1
IMAGE_SIZE = 128  # square input size (multiple of 32)
BATCH_SIZE = 32  # images per call (the utility gate's GATE_BATCH_SIZE)
STEPS = 5  # timed calls per item (the median is reported)
WARMUP = 1  # untimed calls first
THREADS = None  # torch threads (None: torch's default)
DEVICE = "auto"  # "auto", "cuda", "cpu"

from utils.runtime.config import load_config  # noqa: E402


def median_seconds(function, steps: int, warmup: int, device) -> float:
    import statistics
    import time

    import torch

    times = []
    for index in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from utils.apps.pipelines import build_spdnet
    from utils.models.conditional import ConfidenceRule
    from utils.models.detector import load_detector
    from utils.models.integrated_model import IntegratedModel
    from utils.models.rain_gate import RainDetector
    from utils.runtime.device import choose_device
    from utils.training.engine import detector_targets

    config = load_config(globals(), argv)
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    device = choose_device(config["DEVICE"])
    size, batch = config["IMAGE_SIZE"], config["BATCH_SIZE"]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    labels = detector_targets([
        {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])}
    ] * batch, device)
    spdnet = build_spdnet(config["SPDNET_WEIGHTS"], config["SPDNET_N_FEATS"], config["SPDNET_N_RESBLOCKS"])
    integrated = IntegratedModel(spdnet, load_detector(config["DETECTOR"])).to(device).eval()
    routers = {"rain gate (small_cnn)": RainDetector("small_cnn", size).to(device).eval(),
               "detector-view gate": RainDetector("detector_view", detector=integrated.detector).to(device).eval(),
               "confidence rule": ConfidenceRule(integrated)}

    def one_by_one():
        return torch.stack([integrated.detect(images[i:i + 1], [labels[i]]).loss for i in range(batch)])

    items = {"per-image losses, one forward per image": one_by_one,
             "per-image losses, one batched forward": lambda: integrated.per_image_losses(images, labels),
             "the frozen detector's forward (reference)": lambda: integrated.detect(images)}
    items.update({f"decision: {name}": (lambda router=router: router.probability(images))
                  for name, router in routers.items()})
    results = {}
    with torch.no_grad():
        for name, function in items.items():
            seconds = median_seconds(function, config["STEPS"], config["WARMUP"], device)
            results[name] = 1000.0 * seconds / batch
    reference = results["the frozen detector's forward (reference)"]
    print(f"{batch} images of {size}x{size} on {device}, median of {config['STEPS']} calls, ms per image:")
    for name, ms in results.items():
        print(f"  {name:<48} {ms:8.2f} ms  ({ms / reference:5.2f}x the detector's forward)")
    return results


if __name__ == "__main__":
    main()

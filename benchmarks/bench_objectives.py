"""What each adaptation objective costs per training step, side by side in one run.

    python -m benchmarks.bench_objectives                                  # the demo's models and sizes
                                                                           # (~1 min on a CPU)
    python -m benchmarks.bench_objectives --IMAGE_SIZE=640 --BATCH_SIZE=2  # a real run's size

Times forward + backward + AdamW step of the training model for each objective of the ablation
(tools/objective_ablation.py), on one fixed batch of random images with the clean pair given, after
WARMUP steps: the median of STEPS steps each, and the ratio to the detection loss alone. The feature
loss adds a gradient-free backbone + encoder pass over the clean image; the pixel loss adds almost
nothing; the feature loss alone skips the decoder.
"""

from __future__ import annotations

DETECTOR = "./demo_weights/detector"  # frozen detector (hub id or directory; the demo's by default)
SPDNET_WEIGHTS = "./demo_weights/spdnet_original.pt"  # SPDNet to train (None: random init)
SPDNET_N_FEATS = 8  # used when SPDNET_WEIGHTS is None or an official file
SPDNET_N_RESBLOCKS = 1
IMAGE_SIZE = 128  # square input size (multiple of 32)
BATCH_SIZE = 8  # images per step
STEPS = 10  # timed steps per objective (the median is reported)
WARMUP = 2  # untimed steps first
THREADS = None  # torch threads (None: torch's default)
DEVICE = "auto"  # "auto", "cuda", "cpu"

from utils.runtime.config import load_config  # noqa: E402

OBJECTIVES = {  # the ablation's objectives: the terms of DETECTION 1 + FEATURE 10 + PIXEL 100 each switches on
    "detection": (1.0, 0.0, 0.0),
    "feature": (0.0, 10.0, 0.0),
    "pixel": (0.0, 0.0, 100.0),
    "detection+feature": (1.0, 10.0, 0.0),
    "detection+feature+pixel": (1.0, 10.0, 100.0),
}


def main(argv: list[str] | None = None) -> dict:
    import statistics
    import time

    import torch

    from utils.training.engine import detector_targets
    from utils.training.objectives import Objective, adaptation_loss
    from utils.apps.pipelines import build_training_model
    from utils.runtime.device import choose_device

    config = load_config(globals(), argv)
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    device = choose_device(config["DEVICE"])
    generator = torch.Generator().manual_seed(0)
    size, batch = config["IMAGE_SIZE"], config["BATCH_SIZE"]
    images = torch.rand(batch, 3, size, size, generator=generator).to(device)
    clean = (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(0, 1).to(device)
    labels = detector_targets([
        {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])}
    ] * batch, device)
    results = {}
    for name, weights in OBJECTIVES.items():
        objective = Objective(*weights)
        torch.manual_seed(0)
        model = build_training_model({**config, "GRADIENT_CHECKPOINTING": False, "CHANNELS_LAST": False},
                                     device).train()
        optimizer = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-5)
        seconds = []
        for step in range(config["WARMUP"] + config["STEPS"]):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss, _ = adaptation_loss(model, images, labels, clean, objective)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # wait for the step
            if step >= config["WARMUP"]:
                seconds.append(time.perf_counter() - start)
        results[name] = statistics.median(seconds)
    print(f"\nseconds per training step, median of {config['STEPS']} ({batch} x {size}² images, {device}, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'objective':<26}{'s/step':>8}{'vs detection':>14}")
    for name, value in results.items():
        print(f"{name:<26}{value:>8.3f}{value / results['detection']:>13.2f}x")
    return results


if __name__ == "__main__":
    main()

"""Measure the adaptation training step: speed, memory and FLOP/s per configuration (nanoGPT-style bench).

    python -m benchmarks.bench                                   # CPU defaults: timing at 192x192, memory at 320x320
                                                                 # (tens of minutes: compiling)
    python -m benchmarks.bench --MEMORY_IMAGE_SIZE=640           # memory measured at 640x640 itself (minutes more)
    python -m benchmarks.bench --IMAGE_SIZE=640 --BATCH_SIZE=2   # on a GPU
    python -m benchmarks.bench --TIMING=False --MEMORY_IMAGE_SIZE=640 --MICRO_BATCHES=[1,2,4] \
        --CONFIGURATIONS='["bf16+ckpt","fp32+ckpt"]'              # what fits: peak memory per micro-batch

For each configuration (fp32, fp32 + activation checkpointing, bf16 + channels_last, bf16 +
checkpointing + channels_last, the same compiled by torch.compile) it times the full training step
as training runs it (utils/training/engine.train_one_epoch: forward, backward, guard, clipping,
optimizer) after warm-up, median of RUNS, all configurations round-robin in one run; the
first step's time is reported apart as warm-up (compilation, for compiled ones); measures memory at
MEMORY_IMAGE_SIZE and reports it per 640x640 image (scaled by the pixel count: activations grow with
it) — on CUDA during a timed step when MEMORY_IMAGE_SIZE is IMAGE_SIZE, otherwise in a fresh process
per configuration (where a compiled configuration compiles again, at MEMORY_IMAGE_SIZE: minutes on a
CPU, fewer when that is IMAGE_SIZE and inductor's on-disk cache has the graphs); counts FLOPs with
torch.utils.flop_counter against a matmul peak measured in the same run; times one data loader
worker and the conditional model's clean and rainy paths. Prints a table, writes JSON.

Memory: on CUDA, torch.cuda.max_memory_allocated over the step. On CPU, the step's peak resident
memory above the process's level before it (VmHWM after resetting it, with glibc told to map every
large block so freed tensors really leave), plus the peak bytes of tensors saved for backward as
torch.autograd.graph.saved_tensors_hooks sees them. That hook does not see inside checkpointed
regions (checkpointing keeps their activations out of the graph on purpose), so for checkpointed
configurations only the peak memory column tells the whole story.
"""

from __future__ import annotations

IMAGE_SIZE = 192  # timing resolution (the CPU default keeps an eager step to seconds; 640 on a GPU)
BATCH_SIZE = 1  # images per step
RUNS = 5  # timed steps per configuration, taken round-robin (median reported)
WARMUP = 1  # steps before timing (at least one: the first, reported as warm-up, compiles a compiled configuration)
MEMORY_IMAGE_SIZE = 320  # memory is measured at this size, one step in a fresh process (0: skip)
MEMORY_REPORT_SIZE = 640  # ... and reported per image of this size, scaled by the pixel count
CONFIGURATIONS = ["fp32", "fp32+ckpt", "bf16+cl", "bf16+ckpt+cl", "bf16+ckpt+cl+compile"]  # precision [+ckpt]
# [+cl = channels_last] [+compile or +compile:MODE]
SPDNET_N_FEATS = 32  # SPDNet width
SPDNET_N_RESBLOCKS = 3  # SPDNet blocks
DETECTOR = None  # None: the r18vd architecture at random init (offline); or a hub id / local directory
LOADER_IMAGES = 48  # photo-sized JPEGs generated to time one loader worker (0: skip)
DEVICE = "auto"  # "auto", "cuda", "cpu"
TIMING = True  # time the configurations (False: only the MICRO_BATCHES memory table)
MICRO_BATCHES = []  # also the peak memory of one training step per micro-batch of these sizes at MEMORY_IMAGE_SIZE
#   (e.g. [1, 2, 4]; a fresh process each, not scaled): what fits on a card
OUTPUT_DIR = "./outputs_spdnet_adaptation"  # bench.json goes here

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

# torch and the rest of the library are imported inside the functions: the settings are checked first,
# and a memory probe's fresh process imports only what it measures.
from utils.runtime.checkpoint import atomic_write_json  # noqa: E402
from utils.runtime.config import command_line, load_config  # noqa: E402
from utils.runtime.errors import SettingError  # noqa: E402


def parse_configuration(name: str) -> dict:
    from utils.runtime.device import COMPILE_MODES

    parts = name.split("+")
    compiles = [p for p in parts[1:] if p == "compile" or p.startswith("compile:")]
    modes = [p.partition(":")[2] or "default" for p in compiles]
    if (parts[0] not in ("fp32", "bf16") or any(p not in ("ckpt", "cl") for p in parts[1:] if p not in compiles)
            or len(compiles) > 1 or any(mode not in COMPILE_MODES[1:] for mode in modes)):
        raise SettingError(f"configuration {name!r}: 'fp32' or 'bf16', then optional '+ckpt', '+cl' and '+compile' "
                           f"or '+compile:MODE' (MODE one of {COMPILE_MODES[1:]})")
    return {"precision": parts[0], "checkpointing": "ckpt" in parts, "channels_last": "cl" in parts,
            "compile": modes[0] if modes else "off"}


def eager_counterpart(name: str) -> str:
    """The configuration without its '+compile' part: what a compiled one is compared with."""
    return "+".join(p for p in name.split("+") if p != "compile" and not p.startswith("compile:"))


def build(config: dict, configuration: str, device):
    import torch

    from utils.models.detector import rtdetr_r18vd_config
    from utils.apps.pipelines import build_training_model
    from utils.runtime.device import compile_spdnet

    settings = parse_configuration(configuration)
    torch.manual_seed(0)
    model = build_training_model({
        "SPDNET_WEIGHTS": None, "SPDNET_N_FEATS": config["SPDNET_N_FEATS"],
        "SPDNET_N_RESBLOCKS": config["SPDNET_N_RESBLOCKS"],
        "GRADIENT_CHECKPOINTING": settings["checkpointing"], "CHANNELS_LAST": settings["channels_last"],
        "DETECTOR": config["DETECTOR"] or rtdetr_r18vd_config(),
    }, device).train()
    compile_spdnet(model.spdnet, settings["compile"], device)  # compiled at its first step (warm-up)
    optimizer = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-5)
    return model, optimizer, settings["precision"]


def synthetic_batch(batch_size: int, size: int, num_labels: int, device):
    import torch

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch_size, 3, size, size, generator=generator).to(device)
    labels = [
        {"class_labels": torch.randint(0, num_labels, (3,), generator=generator).to(device),
         "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4], [0.5, 0.8, 0.5, 0.2]]).to(device)}
        for _ in range(batch_size)
    ]
    return images, labels


def training_step(model, optimizer, precision, images, labels, device) -> None:
    """One optimizer step through the loop every trainer uses (utils/training/engine.train_one_epoch):
    the detection loss of SPDNet's output under ``precision``, the non-finite guard, gradient clipping
    at the training script's GRAD_CLIP_NORM (1.0), the optimizer and scheduler steps."""
    import torch

    from utils.training.engine import LoopSettings, TrainState, train_one_epoch
    from utils.training.objectives import Objective, adaptation_loss

    objective = Objective(detection=1.0)
    settings = LoopSettings(accumulation_steps=1, clip_grad_norm=1.0, precision=precision,
                            max_nonfinite_in_a_row=1, log_every_steps=10**9, terms=("detection",),
                            auto_micro_batch=False)  # out of memory is a figure here, not something to work around
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_one_epoch(model, lambda x, targets: adaptation_loss(model, x, targets, None, objective), optimizer, scheduler,
                    [(images, labels)], TrainState(), settings, micro_batches_in_epoch=1, device=device,
                    show_progress=False)


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function, runs: int, warmup: int, device) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        synchronise(device)
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_flops(dtype, device) -> float:
    """FLOP/s of a large square matmul: the ceiling the step's FLOP/s is compared with."""
    import torch

    n = 4096 if device.type == "cuda" else 1536
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs=5, warmup=2, device=device)


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class SavedTensorCounter:
    """Peak bytes of tensors autograd saves for backward, each storage counted once while alive."""

    def __init__(self):
        self.live: dict[int, list] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def pack(self, tensor):
        import weakref

        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.live:
            self.live[key][1] += 1
        else:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        holder = _Holder(tensor)
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.tensor


class _Holder:
    def __init__(self, tensor):
        self.tensor = tensor


def bytes_per_report_image(config: dict) -> float:
    """Bytes of one step at MEMORY_IMAGE_SIZE that make 1 GB per MEMORY_REPORT_SIZE^2 image: SPDNet's
    maps and the backbone's grow with the pixel count; the decoder's fixed-size query tensors are
    scaled too, so a small measurement errs on the high side."""
    return config["BATCH_SIZE"] * 1e9 / (config["MEMORY_REPORT_SIZE"] / config["MEMORY_IMAGE_SIZE"]) ** 2


def memory_probe(config: dict, configuration: str) -> dict:
    """One step at MEMORY_IMAGE_SIZE in this (fresh) process: peak memory and saved-tensor bytes."""
    import torch

    from utils.runtime.device import choose_device, enable_fast_cuda_math

    device = choose_device(config["DEVICE"])
    enable_fast_cuda_math(device)
    model, optimizer, precision = build(config, configuration, device)
    num_labels = len(model.detector.config.id2label)
    images, labels = synthetic_batch(config["BATCH_SIZE"], config["MEMORY_IMAGE_SIZE"], num_labels, device)
    compiled = parse_configuration(configuration)["compile"] != "off"
    # Kernels, optimizer state, allocator warm; a compiled SPDNet is compiled for the measured size
    # itself (a graph per shape). r18vd needs >= 300 anchors, so an eager warm-up step runs at 128x128.
    warm = (images, labels) if compiled else synthetic_batch(config["BATCH_SIZE"], 128, num_labels, device)
    training_step(model, optimizer, precision, *warm, device)
    counter = SavedTensorCounter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _proc_status_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # reset VmHWM to the current resident size
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        training_step(model, optimizer, precision, images, labels, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _proc_status_kb("VmHWM") * 1024 - before
    per_image = bytes_per_report_image(config)
    return {"peak_gb_per_image": peak / per_image, "saved_gb_per_image": counter.peak / per_image}


def measure_memory(config: dict, configuration: str) -> dict:
    code = (
        "import json, sys\nfrom benchmarks import bench\n"
        f"print('RESULT' + json.dumps(bench.memory_probe(json.loads(sys.argv[1]), {configuration!r})))\n"
    )
    # Large blocks always mmapped: freed tensors go back to the system, so resident memory follows them.
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                            env=environment, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = next((output for output in result.stdout.splitlines() if output.startswith("RESULT")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"memory probe for {configuration} failed:\n{result.stderr[-2000:]}")
    return json.loads(line[len("RESULT"):])


def loader_rate(images: int) -> float:
    """Images/s of one loader worker at 640x640 on generated 640x480 JPEGs."""
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from utils.data.coco import benchmark_loader, build_dataset
    from utils.data.synthetic import CATEGORIES, render_scene

    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "val2017")
        os.makedirs(folder)
        os.makedirs(os.path.join(root, "annotations"))
        entries = []
        for index in range(images):
            pixels, _ = render_scene(np.random.default_rng([index]), 640)
            noise = np.random.default_rng(index).integers(-20, 20, pixels[:480].shape)  # photo-like detail
            Image.fromarray(np.clip(pixels[:480].astype(int) + noise, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, f"{index:012d}.jpg"), quality=90)
            entries.append({"id": index, "file_name": f"{index:012d}.jpg", "width": 640, "height": 480})
        with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as file:
            json.dump({"images": entries, "annotations": [], "categories": CATEGORIES}, file)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker gets
        try:
            dataset = build_dataset(root, None, "val", None, image_size=640, train=True, coco_ratio=1.0, rain_ratio=0.0)
            return benchmark_loader(dataset, images)
        finally:
            torch.set_num_threads(threads)


def time_round_robin(config: dict, batch, device) -> tuple[dict, dict, dict]:
    """Every configuration's warm-up seconds, its RUNS step times and (on CUDA at IMAGE_SIZE) its peak
    memory. Round-robin: this machine's speed drifts over minutes, so every configuration gets one step
    in turn and the medians compare like with like."""
    import torch

    setups = {}
    for configuration in config["CONFIGURATIONS"]:
        model, optimizer, precision = build(config, configuration, device)
        setups[configuration] = lambda m=model, o=optimizer, p=precision: training_step(m, o, p, *batch, device)
    print(f"timing {', '.join(setups)} round-robin ...", flush=True)
    warmups = {}
    for configuration, step in setups.items():
        warmups[configuration] = median_seconds(step, runs=1, warmup=0, device=device)  # compiles a compiled one
        for _ in range(config["WARMUP"] - 1):
            step()
    times = {configuration: [] for configuration in setups}
    for _ in range(config["RUNS"]):
        for configuration, step in setups.items():
            times[configuration].append(median_seconds(step, runs=1, warmup=0, device=device))
    memory = {}
    if device.type == "cuda" and config["MEMORY_IMAGE_SIZE"] == config["IMAGE_SIZE"]:
        per_image = bytes_per_report_image(config)
        for configuration, step in setups.items():
            synchronise(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            synchronise(device)
            memory[configuration] = {
                "peak_gb_per_image": (torch.cuda.max_memory_allocated(device) - before) / per_image}
    return warmups, times, memory


def configuration_entries(config: dict, warmups: dict, times: dict, memory: dict, flops_per_step: float,
                          peaks: dict) -> dict:
    """The report's row per configuration: speed, FLOP/s, memory (measured in a fresh process unless
    ``memory`` has it), and its speed-ups against fp32 and against its eager counterpart."""
    entries = {}
    for configuration, samples in times.items():
        seconds = statistics.median(samples)
        settings = parse_configuration(configuration)
        entry = {"step_seconds": seconds, "images_per_s": config["BATCH_SIZE"] / seconds,
                 "warmup_seconds": warmups[configuration], "tflops": flops_per_step / seconds / 1e12,
                 "fraction_of_matmul_peak": flops_per_step / seconds / peaks[settings["precision"]]}
        if configuration in memory:
            entry.update(memory[configuration])
        elif config["MEMORY_IMAGE_SIZE"]:
            print(f"memory {configuration} at {config['MEMORY_IMAGE_SIZE']}x{config['MEMORY_IMAGE_SIZE']} ...",
                  flush=True)
            entry.update(measure_memory(config, configuration))
        entries[configuration] = entry
    baseline = entries.get("fp32")
    for name, entry in entries.items():
        if baseline:
            entry["speedup_vs_fp32"] = entry["images_per_s"] / baseline["images_per_s"]
        eager = entries.get(eager_counterpart(name))
        if eager is not None and eager is not entry:
            entry["speedup_vs_eager"] = entry["images_per_s"] / eager["images_per_s"]
    return entries


def conditional_paths(config: dict, device) -> dict:
    """Milliseconds of the conditional model's clean path (detector alone) and rainy path (SPDNet + detector)."""
    import torch

    print("timing the conditional model's paths ...", flush=True)
    model, _, _ = build(config, "fp32", device)
    model.eval()
    images, _ = synthetic_batch(1, config["IMAGE_SIZE"], 1, device)
    with torch.inference_mode():
        clean = median_seconds(lambda: model(images, derain=False), config["RUNS"], config["WARMUP"], device)
        rainy = median_seconds(lambda: model(images, derain=True), config["RUNS"], config["WARMUP"], device)
    return {"clean_path_ms": 1000 * clean, "rainy_path_ms": 1000 * rainy, "clean_path_speedup": rainy / clean}


def main(argv: list[str] | None = None) -> dict:
    import torch

    from utils.runtime.device import choose_device, enable_fast_cuda_math

    started = time.perf_counter()
    config = load_config(globals(), argv)
    device = choose_device(config["DEVICE"])
    enable_fast_cuda_math(device)
    for configuration in config["CONFIGURATIONS"]:
        parse_configuration(configuration)
    report = {"device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                         else f"cpu ({os.cpu_count()} cores)"),
              "image_size": config["IMAGE_SIZE"], "batch_size": config["BATCH_SIZE"], "configurations": {}}
    if config["MICRO_BATCHES"]:
        report["micro_batch_memory"] = micro_batch_memory(config)
    if config["TIMING"]:
        time_configurations(config, report, device)
    report["bench_seconds"] = time.perf_counter() - started
    print_report(report, config)
    path = atomic_write_json(os.path.join(config["OUTPUT_DIR"], "bench.json"), report)  # makes the folder
    print(f"wrote {path} ({report['bench_seconds']:.0f} s in all)")
    return report


def micro_batch_memory(config: dict) -> dict:
    """{configuration: {micro-batch: peak GB of one training step at MEMORY_IMAGE_SIZE}} (``memory_probe``
    in a fresh process per cell; on the CPU the resident-memory peak, not a GPU allocator's)."""
    table = {}
    for configuration in config["CONFIGURATIONS"]:
        for batch in config["MICRO_BATCHES"]:
            print(f"memory: {configuration}, micro-batch {batch} at {config['MEMORY_IMAGE_SIZE']}x"
                  f"{config['MEMORY_IMAGE_SIZE']} ...", flush=True)
            probe = measure_memory(dict(config, BATCH_SIZE=batch, MEMORY_REPORT_SIZE=config["MEMORY_IMAGE_SIZE"]),
                                   configuration)
            table.setdefault(configuration, {})[str(batch)] = probe["peak_gb_per_image"] * batch
    return table


def time_configurations(config: dict, report: dict, device) -> None:
    """The timing table: FLOPs, each configuration's speed (and memory), the conditional model's
    paths and one loader worker, into ``report``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    peaks = {"fp32": matmul_peak_flops(torch.float32, device), "bf16": matmul_peak_flops(torch.bfloat16, device)}
    report["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    # The useful work of a step: counted on the plain fp32 model, so recomputation is not credited.
    model, optimizer, precision = build(config, "fp32", device)
    batch = synthetic_batch(config["BATCH_SIZE"], config["IMAGE_SIZE"], len(model.detector.config.id2label), device)
    counter = FlopCounterMode(display=False)
    with counter:
        training_step(model, optimizer, precision, *batch, device)
    flops_per_step = counter.get_total_flops()
    report["gflop_per_image"] = flops_per_step / config["BATCH_SIZE"] / 1e9
    warmups, times, memory = time_round_robin(config, batch, device)
    report["configurations"] = configuration_entries(config, warmups, times, memory, flops_per_step, peaks)
    report["conditional"] = conditional_paths(config, device)
    if config["LOADER_IMAGES"]:
        print("timing one data loader worker ...", flush=True)
        report["loader_images_per_s_per_worker"] = loader_rate(config["LOADER_IMAGES"])


def print_report(report: dict, config: dict) -> None:
    if "micro_batch_memory" in report:
        size = config["MEMORY_IMAGE_SIZE"]
        print(f"\n{report['device']}: peak memory (GB) of one training step per micro-batch at {size}x{size}"
              + (" (CPU: resident memory, not a GPU allocator's)" if report["device"].startswith("cpu") else ""))
        print(f"{'configuration':<16}" + "".join(f"{'batch ' + str(b):>10}" for b in config["MICRO_BATCHES"]))
        for name, row in report["micro_batch_memory"].items():
            print(f"{name:<16}" + "".join(f"{gb:>10.2f}" for gb in row.values()))
    if report["configurations"]:
        print_timing(report, config)


def print_timing(report: dict, config: dict) -> None:
    size, memory_size = config["IMAGE_SIZE"], config["MEMORY_IMAGE_SIZE"]
    report_size = config["MEMORY_REPORT_SIZE"]
    memory = (f"memory per {report_size}x{report_size} image (measured at {memory_size}x{memory_size})"
              if memory_size else "memory not measured")
    print(f"\n{report['device']}: training step, batch {config['BATCH_SIZE']} at {size}x{size}; "
          f"{memory}; {report['gflop_per_image']:.0f} GFLOP per image")
    width = max(16, *(len(name) + 2 for name in report["configurations"]))
    header = (f"{'configuration':<{width}}{'img/s':>8}{'vs fp32':>9}{'vs eager':>10}{'warm-up s':>11}{'TFLOP/s':>9}"
              f"{'% peak':>8}{'peak GB':>9}{'saved GB':>10}")
    print(header + "\n" + "-" * len(header))
    nan = float("nan")
    for name, entry in report["configurations"].items():
        print(f"{name:<{width}}{entry['images_per_s']:>8.3f}{entry.get('speedup_vs_fp32', nan):>8.2f}x"
              f"{entry.get('speedup_vs_eager', nan):>9.2f}x{entry['warmup_seconds']:>11.1f}{entry['tflops']:>9.3f}"
              f"{100 * entry['fraction_of_matmul_peak']:>7.1f}%"
              f"{entry.get('peak_gb_per_image', nan):>9.2f}{entry.get('saved_gb_per_image', nan):>10.2f}")
    peaks = report["matmul_peak_tflops"]
    print(f"matmul peak: {peaks['fp32']:.3f} TFLOP/s fp32, {peaks['bf16']:.3f} TFLOP/s bf16")
    conditional = report["conditional"]
    print(f"conditional model at {size}x{size}: clean path {conditional['clean_path_ms']:.0f} ms/img, rainy path "
          f"{conditional['rainy_path_ms']:.0f} ms/img ({conditional['clean_path_speedup']:.1f}x)")
    if "loader_images_per_s_per_worker" in report:
        print(f"data loader: {report['loader_images_per_s_per_worker']:.1f} images/s per worker at 640x640")


if __name__ == "__main__":
    command_line(main)

"""The objectives ablation on the demo world: which loss terms and how many clean images serve users best.

    python tools/objective_ablation.py                      # 5 objectives x COCO_RATIO {0, 0.5} x seeds 42 7: 20 runs,
                                                            # two at a time (times: docs/objectives.md)
    python tools/objective_ablation.py --seeds 42 --jobs 1  # one seed
    python tools/objective_ablation.py --collect-only       # tabulate the runs already on disk

Every objective is a subset of one weighted sum, DETECTION 1 + FEATURE 10 + PIXEL 100: weights that
make each term about as large as the detection loss at the start, each the power of ten nearest to
detection / term (the starting terms, measured with the original SPDNet on the demo world's rainy
training images, and the command that measures them: docs/objectives.md). Each run is the real
training script, as a user runs it:

    Training_SPDNet_Adaptation.py configs/demo.py --DETECTION_LOSS_WEIGHT=.. --FEATURE_LOSS_WEIGHT=..
        --PIXEL_LOSS_WEIGHT=.. --COCO_RATIO=r --SEED=s --OUTPUT_DIR=<ablation>/<objective>_coco<r>_seed<s>

then the adapted SPDNet is scored in a process of its own (``--score DIR``): rainy-val AP, clean-val AP
with SPDNet always on (what a gate that errs sends through it), and the rainy-val PSNR / SSIM of its
output. The frozen detector alone and the original SPDNet come from one Eval_SPDNet_Adaptation.py run
on the same world. Every run uses the demo's one thread (CPU_THREADS in configs/demo.py); ``--jobs 2``
runs two at once (figures unchanged, wall time and training seconds not comparable with --jobs 1). Writes
<ablation>/ablation.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.apps.script_runs import run_script  # noqa: E402

DEMO_DIR = "outputs_spdnet_adaptation/demo"
ABLATION_DIR = "outputs_spdnet_adaptation/ablation"
WEIGHTS = {"detection": 1.0, "feature": 10.0, "pixel": 100.0}
OBJECTIVES = {  # name: the terms it switches on
    "detection": ("detection",),
    "feature": ("feature",),
    "pixel": ("pixel",),
    "detection+feature": ("detection", "feature"),
    "detection+feature+pixel": ("detection", "feature", "pixel"),
}
COCO_RATIOS = (0.0, 0.5)


def run_name(objective: str, coco_ratio: float, seed: int) -> str:
    return f"{objective}_coco{coco_ratio:g}_seed{seed}"


def train_and_score(objective: str, coco_ratio: float, seed: int, threads: int | None) -> dict:
    """One run, or the one on disk when it finished before (an interrupted ablation goes on from there)."""
    output_dir = os.path.join(ABLATION_DIR, run_name(objective, coco_ratio, seed))
    if os.path.isfile(os.path.join(ROOT, output_dir, "ablation_results.json")):
        return read_run(objective, coco_ratio, seed)
    os.makedirs(os.path.join(ROOT, output_dir), exist_ok=True)
    weights = [f"--{term.upper()}_LOSS_WEIGHT={WEIGHTS[term] if term in OBJECTIVES[objective] else 0.0}"
               for term in WEIGHTS]
    arguments = ["configs/demo.py", *weights, f"--COCO_RATIO={coco_ratio}", f"--SEED={seed}",
                 f"--OUTPUT_DIR={output_dir}"]
    log = os.path.join(ROOT, output_dir, "run.log")
    seconds = run_script(["Training_SPDNet_Adaptation.py", *arguments], log, threads)
    run_script([os.path.join("tools", "objective_ablation.py"), "--score", output_dir,
                "--training-seconds", f"{seconds:.1f}"],
        log + ".score", threads)
    print(f"{run_name(objective, coco_ratio, seed)}: done ({seconds:.0f} s training script)", flush=True)
    return read_run(objective, coco_ratio, seed)


def score(output_dir: str, training_seconds: float) -> None:
    """Score one run's adapted SPDNet: rainy-val AP, clean-val AP always derained, rainy-val PSNR / SSIM."""
    import torch

    from utils.runtime.checkpoint import atomic_write_json, load_weights_file
    from utils.models.detector import load_detector
    from utils.training.engine import evaluate
    from utils.apps.evaluation import build_val_loader, image_quality
    from utils.apps.pipelines import load_adapted_spdnet
    from utils.runtime.device import choose_device

    os.chdir(ROOT)
    weights_path = os.path.join(output_dir, "spdnet_adapted.pt")
    config = load_weights_file(weights_path, "ADAPTED_WEIGHTS")["config"]  # the resolved config the run trained with
    config.update(ADAPTED_WEIGHTS=weights_path, BATCH_SIZE=8, VAL_PERCENT=100.0)
    device = choose_device(config["DEVICE"])
    detector = load_detector(config["DETECTOR"])
    model = load_adapted_spdnet(config, detector).to(device).eval()
    results = {}
    for split, rain_fraction in (("rainy", 1.0), ("clean", 0.0)):
        loader, annotation_file, label_to_category_id = build_val_loader(config, detector.config.id2label,
                                                                         rain_fraction)
        with torch.no_grad():
            results[split] = evaluate(model, loader, annotation_file, label_to_category_id, device=device,
                                      precision=config["PRECISION"], derain=True, description=f"{split}: adapted")
    results["rainy_image_quality"] = image_quality({"adapted": model.spdnet}, config["COCO_DIR"],
                                                   config["COCO_RAIN_DIR"], config["IMAGE_SIZE"], device)["adapted"]
    with open(os.path.join(output_dir, "training_log.jsonl")) as file:
        steps = [json.loads(line) for line in file if '"type": "train"' in line]
    results["training_images_per_s"] = statistics.median(r["images_per_s"] for r in steps)
    results["training_seconds"] = training_seconds  # the training script's wall time, start-up included
    atomic_write_json(os.path.join(output_dir, "ablation_results.json"), results)


def read_run(objective: str, coco_ratio: float, seed: int) -> dict:
    with open(os.path.join(ROOT, ABLATION_DIR, run_name(objective, coco_ratio, seed), "ablation_results.json")) as file:
        return {"objective": objective, "coco_ratio": coco_ratio, "seed": seed, **json.load(file)}


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict], reference: dict) -> str:
    vanilla_clean = reference["clean"]["vanilla"]["AP"]
    original_rainy = reference["rainy"]["original"]["AP"]
    detection_gain = {ratio: statistics.mean(r["rainy"]["AP"] for r in runs if r["objective"] == "detection"
                                             and r["coco_ratio"] == ratio) - original_rainy for ratio in COCO_RATIOS}
    lines = [
        "| objective | COCO_RATIO | seeds | rainy-val AP | clean-val AP, always derain | clean kept | "
        "rainy gain kept | rainy-val PSNR dB | training s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| frozen detector alone | – | – | {reference['rainy']['vanilla']['AP']:.3f} | {vanilla_clean:.3f} | 1.00 | "
        f"– | {reference['rainy_image_quality']['rainy']['psnr_db']:.2f} | – |",
        f"| original SPDNet | – | – | {original_rainy:.3f} | {reference['clean']['original']['AP']:.3f} | "
        f"{reference['clean']['original']['AP'] / vanilla_clean:.2f} | 0.00 | "
        f"{reference['rainy_image_quality']['original']['psnr_db']:.2f} | – |",
    ]
    for objective in OBJECTIVES:
        for ratio in COCO_RATIOS:
            chosen = [r for r in runs if r["objective"] == objective and r["coco_ratio"] == ratio]
            if not chosen:
                continue
            rainy = [r["rainy"]["AP"] for r in chosen]
            clean = [r["clean"]["AP"] for r in chosen]
            seconds = ", ".join(f"{r['training_seconds']:.0f}" for r in chosen)  # one per seed: machines' loads differ
            gain_kept = ((statistics.mean(rainy) - original_rainy) / detection_gain[0.0] if detection_gain[0.0] > 0
                         else float("nan"))
            lines.append(
                f"| {objective} | {ratio:g} | {', '.join(str(r['seed']) for r in chosen)} | {spread(rainy)} | "
                f"{spread(clean)} | {statistics.mean(clean) / vanilla_clean:.2f} | "
                f"{gain_kept:.2f} | {spread([r['rainy_image_quality']['psnr_db'] for r in chosen], 2)} | "
                f"{seconds} |"
            )
    lines += [
        "",
        "Mean ± sd over the seeds of a row. 'clean kept' = clean-val AP always derained / the "
        "frozen detector's; 'rainy gain kept' = (rainy-val AP - original SPDNet's) / the detection-only objective's "
        "gain at COCO_RATIO 0. Goal: clean kept >= 0.95 with rainy gain kept >= 0.90.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--coco-ratios", type=float, nargs="+", default=list(COCO_RATIOS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each on the demo's CPU_THREADS)")
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished runs, run nothing")
    parser.add_argument("--score", metavar="DIR", help=argparse.SUPPRESS)  # internal: score one run in its own process
    parser.add_argument("--training-seconds", type=float, default=float("nan"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        return score(args.score, args.training_seconds)
    jobs = [(o, r, s) for s in args.seeds for o in args.objectives for r in args.coco_ratios]  # seed by seed
    os.makedirs(os.path.join(ROOT, ABLATION_DIR), exist_ok=True)
    reference_dir = os.path.join(ABLATION_DIR, "reference")
    if args.collect_only:
        done = [job for job in jobs
                if os.path.isfile(os.path.join(ROOT, ABLATION_DIR, run_name(*job), "ablation_results.json"))]
        for job in jobs:
            if job not in done:
                print(f"not run yet: {run_name(*job)}")
        runs = [read_run(*job) for job in done]
    else:
        # The world and its gate, then the frozen detector and the original SPDNet, once.
        run_script(["Make_Demo.py", "configs/demo.py"], os.path.join(ROOT, ABLATION_DIR, "make_demo.log"), None)
        os.makedirs(os.path.join(ROOT, reference_dir), exist_ok=True)
        if not os.path.isfile(os.path.join(ROOT, reference_dir, "eval_results.json")):
            run_script(["Eval_SPDNet_Adaptation.py", "configs/demo.py", "--EVAL_CLEAN=True",
                 f"--OUTPUT_DIR={reference_dir}",
                 "--ADAPTED_WEIGHTS=demo_weights/spdnet_original.pt"],  # only its vanilla and original columns are read
                os.path.join(ROOT, reference_dir, "eval.log"), None)
        threads = 1 if args.jobs > 1 else None
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda job: train_and_score(*job, threads), jobs))
    with open(os.path.join(ROOT, reference_dir, "eval_results.json")) as file:
        reference = json.load(file)
    text = table(runs, reference)
    print(text)
    for suffix, content in (("md", text + "\n"),
                            ("json", json.dumps({"reference": reference, "runs": runs}, indent=2))):
        with open(os.path.join(ROOT, ABLATION_DIR, f"ablation.{suffix}"), "w") as file:
            file.write(content)


if __name__ == "__main__":
    main()

"""The README's demo table: adaptation seeds x demo worlds, mean and spread, and which orderings hold.

    python tools/demo_table.py                                   # worlds 0 and 1, seeds 42 7 123
                                                                 # (~41 min on 2 cores, README)
    python tools/demo_table.py --worlds 0 --seeds 42 --jobs 1    # one run
    python tools/demo_table.py --collect-only                    # tabulate the runs already on disk
    python tools/demo_table.py --detector rt_detr_v2 --worlds 0 --seeds 42 7   # the RT-DETRv2 stand-in

For each world it builds (or reuses) the demo world with Make_Demo.py, then for each seed runs the
real scripts as a user would, each in its own process:

    Training_SPDNet_Adaptation.py configs/demo.py [configs/demo_world1.py] --SEED=s --OUTPUT_DIR=<world>/seed<s>
    Eval_SPDNet_Adaptation.py     (same)  --EVAL_CLEAN=True

and reads back each run's eval_results.json and the world's demo_quality.json. Every run uses the
demo's one thread (CPU_THREADS in configs/demo.py), as the README's demo commands do, so each seed's
row is what those commands print with that seed on the same CPU kernels; ``--jobs 2`` runs two seeds
at once (the figures are the same, only the wall time changes). Writes
outputs_spdnet_adaptation/demo_table.md and .json.
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

DETECTORS = {  # --detector: (its name in the table, {world: config files}, {world: folder})
    "rt_detr": ("RT-DETR", {0: ["configs/demo.py"], 1: ["configs/demo.py", "configs/demo_world1.py"]},
                {0: "outputs_spdnet_adaptation/demo", 1: "outputs_spdnet_adaptation/demo_world1"}),
    "rt_detr_v2": ("RT-DETRv2", {0: ["configs/demo.py", "configs/demo_rtdetr_v2.py"]},
                   {0: "outputs_spdnet_adaptation/demo_rtdetr_v2"}),
}
ROWS = [  # (label, split, pipeline); {detector}: the detector's name
    ("rainy val, vanilla {detector}", "rainy", "vanilla"),
    ("rainy val, original SPDNet + {detector}", "rainy", "original"),
    ("rainy val, adapted SPDNet + {detector}", "rainy", "adapted"),
    ("clean val, vanilla {detector}", "clean", "vanilla"),
    ("clean val, original SPDNet + {detector}", "clean", "original"),
    ("clean val, adapted SPDNet (always derain)", "clean", "adapted"),
]


def run_seed(detector: str, world: int, seed: int, threads: int | None) -> dict:
    _, configs, dirs = DETECTORS[detector]
    output_dir = os.path.join(dirs[world], f"seed{seed}")
    os.makedirs(os.path.join(ROOT, output_dir), exist_ok=True)
    arguments = [*configs[world], f"--SEED={seed}", f"--OUTPUT_DIR={output_dir}"]
    log = os.path.join(ROOT, output_dir, "run.log")
    seconds = run_script(["Training_SPDNet_Adaptation.py", *arguments], log, threads)
    seconds += run_script(["Eval_SPDNet_Adaptation.py", *arguments, "--EVAL_CLEAN=True"], log + ".eval", threads)
    print(f"world {world}, seed {seed}: done in {seconds:.0f} s", flush=True)
    return {"world": world, "seed": seed, "seconds": seconds, **read_run(detector, world, seed)}


def read_run(detector: str, world: int, seed: int) -> dict:
    with open(os.path.join(ROOT, DETECTORS[detector][2][world], f"seed{seed}", "eval_results.json")) as file:
        return {"results": json.load(file)}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def table(runs: list[dict], worlds: list[int], detector: str = "rt_detr") -> str:
    name, _, dirs = DETECTORS[detector]
    quality = {}
    for world in worlds:
        with open(os.path.join(ROOT, dirs[world], "demo_quality.json")) as file:
            quality[world] = json.load(file)
    header = "| COCO AP, 200 val images | " + " | ".join(
        f"world {w} ({len([r for r in runs if r['world'] == w])} seeds)" for w in worlds) + " |"
    lines = [header, "|---" * (len(worlds) + 1) + "|"]
    for label, split, pipeline in ROWS:
        cells = [spread([r["results"][split][pipeline]["AP"] for r in runs if r["world"] == w]) for w in worlds]
        lines.append(f"| {label.format(detector=name)} | " + " | ".join(cells) + " |")
    lines.append("| detector clean val AP / AP50 (no SPDNet) | " + " | ".join(
        f"{quality[w]['detector_clean_val']['AP']:.3f} / {quality[w]['detector_clean_val']['AP50']:.3f}"
        for w in worlds) + " |")
    lines.append("| original SPDNet, rainy val PSNR dB: input -> output | " + " | ".join(
        f"{quality[w]['spdnet_rainy_val']['rainy_psnr_db']:.2f} -> "
        f"{quality[w]['spdnet_rainy_val']['derained_psnr_db']:.2f}"
        for w in worlds) + " |")
    lines.append("| original SPDNet, rainy val SSIM: input -> output | " + " | ".join(
        f"{quality[w]['spdnet_rainy_val']['rainy_ssim']:.3f} -> {quality[w]['spdnet_rainy_val']['derained_ssim']:.3f}"
        for w in worlds) + " |")
    lines += ["", "Orderings (rainy val AP) over all runs:"]
    for better, worse in (("adapted", "original"), ("original", "vanilla"), ("adapted", "vanilla")):
        margins = [r["results"]["rainy"][better]["AP"] - r["results"]["rainy"][worse]["AP"] for r in runs]
        held = sum(margin > 0 for margin in margins)
        lines.append(f"- {better} > {worse} in {held} of {len(runs)} runs "
                     f"(margin {min(margins):+.3f} to {max(margins):+.3f})")
    margins = [r["results"]["clean"]["adapted"]["AP"] / r["results"]["clean"]["vanilla"]["AP"] for r in runs]
    lines.append(f"- always-derain keeps {min(margins):.2f}–{max(margins):.2f} of vanilla's clean-val AP")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", default="rt_detr", choices=sorted(DETECTORS),
                        help="the kept stand-in detector the demo runs (configs/demo_rtdetr_v2.py for rt_detr_v2)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (each on the demo's CPU_THREADS)")
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished runs, run nothing")
    args = parser.parse_args()
    _, configs, dirs = DETECTORS[args.detector]
    missing = [world for world in args.worlds if world not in configs]
    if missing:
        parser.error(f"--detector {args.detector} has no config for world(s) {missing}: use --worlds "
                     f"{' '.join(map(str, sorted(configs)))}")
    if args.collect_only:
        runs = [{"world": w, "seed": s, **read_run(args.detector, w, s)} for w in args.worlds for s in args.seeds]
    else:
        for world in args.worlds:  # the world, its quality record and its gate, once, before the seeds
            run_script(["Make_Demo.py", *configs[world]], os.path.join(ROOT, dirs[world] + "_make.log"), None)
        threads = 1 if args.jobs > 1 else None
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda job: run_seed(args.detector, *job, threads),
                                 [(w, s) for w in args.worlds for s in args.seeds]))
    text = table(runs, args.worlds, args.detector)
    print(text)
    stem = "demo_table" if args.detector == "rt_detr" else f"demo_table_{args.detector}"
    for suffix, content in (("md", text + "\n"), ("json", json.dumps(runs, indent=2))):
        with open(os.path.join(ROOT, f"outputs_spdnet_adaptation/{stem}.{suffix}"), "w") as file:
            file.write(content)


if __name__ == "__main__":
    main()

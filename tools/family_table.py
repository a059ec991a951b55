"""Leave-one-family-out table (issue #24 item 4): each rain family held out of SPDNet's adaptation and of both gates.

    python tools/family_table.py                                  # families streaks drops downpour, seeds 42 7
    python tools/family_table.py --families drops --seeds 42 --jobs 1
    python tools/family_table.py --dry-run                        # print the planned commands, run nothing
    python tools/family_table.py --collect-only                   # tabulate the runs already on disk

One demo world holds every family: configs/demo.py + configs/demo_families.py (DEMO_RAIN_PRESETS medium,
drops_heavy, downpour_medium: one variant folder per preset in its coco_rain/, each recording its
preset, so HOLDOUT_FAMILY picks a family's variants out of COCO_RAIN_DIR). Make_Demo.py builds it once;
then every run is a real script in its own process, on one thread (--CPU_THREADS=1 and
OMP_NUM_THREADS=1), and a run whose result file is already on disk is skipped (the tool resumes; a
training stopped half-way continues from its checkpoint with --RESUME=True). Per
seed s, shared by every family:

    Training_SPDNet_Adaptation.py  --COCO_RAIN_DIR=<the streak variant only>          -> seed<s>/streaks_adapted
        "adapted SPDNet (streaks only, as today)": the demo's adaptation recipe on the streak rain the
        demo world 0 holds, here on this world's scenes (not demo world 0's own adapted run, so every
        row sees the same scenes). It holds out drops and downpour; for the streaks column it is the
        in-distribution reference, not a held-out model.

Per held-out family F and seed s (under <F>/seed<s>/):

    Training_SPDNet_Adaptation.py  --HOLDOUT_FAMILY=F --RANDOM_RAIN=0.5               -> diverse_adapted
    Training_Rain_Detector.py      --HOLDOUT_FAMILY=F --EPOCH_VARIANTS=True --RANDOM_RAIN=0.5
                                   --AUGMENT_BLUR=0.3 --AUGMENT_JPEG=0.5 --AUGMENT_JITTER=0.2
                                   --AUGMENT_NOISE=0.03  (docs/rain_gate.md's diverse run)  -> rain_gate
    Training_Utility_Gate.py       --HOLDOUT_FAMILY=F --UTILITY_MODE=gain --GATE_PERCENT_DATASET=25
                                   --ADAPTED_WEIGHTS=diverse_adapted/spdnet_adapted.pt      -> utility_gate
    Eval_SPDNet_Adaptation.py      --COCO_RAIN_DIR=<F's variants> --EVAL_CLEAN=True --IMAGE_QUALITY=False, with
                                   each adapted SPDNet -> eval_{streaks,diverse}_heldout; for F other than
                                   streaks, the diverse-adapted SPDNet on the streak variant
                                   -> eval_diverse_streaks (the demo's rain, in distribution), and
                                   the soft-mixed SPDNet there -> eval_soft_streaks
    Eval_conditional.py            --HOLDOUT_FAMILY=F, the diverse-adapted SPDNet and each gate (with the
                                   utility gate --ORACLE_REPORT=True) -> cond_rain_gate, cond_utility_gate

The evaluations keep the scripts' SEED (the same val images and variant draws for every training
seed). Rows: vanilla, original SPDNet and both adapted SPDNets (Eval_SPDNet_Adaptation.py's
pipelines), always-derain and never-derain with the diverse-adapted SPDNet, rain-gated and
utility-gated conditional (Eval_conditional.py), and the oracle router, on F's held-out rain, on the
other families' rain (in distribution for the diverse-adapted SPDNet: Eval_conditional.py's rainy split,
whose never- and always-derain rows are vanilla and the diverse-adapted SPDNet there; the streak-only
and the original SPDNet have no cell there) and on clean val; each cell mean ± spread over the
seeds. Writes outputs_spdnet_adaptation/family_table.md and .json.

How the pieces keep the held-out family out: the adaptation and both gates drop its variants from
training and from the validation that picks their epoch and threshold (the adaptation renders the other
families' rain on the clean val images when the held-out family is all a world holds); the utility
gate has no diversity settings (RANDOM_RAIN, EPOCH_VARIANTS, AUGMENT_*), by design (docs/rain_gate.md):
it trains on the rendered variants of the other families only. Eval_SPDNet_Adaptation.py has no
HOLDOUT_FAMILY: the tool hands it a family's variant folders as COCO_RAIN_DIR (an os.pathsep list,
which the data loader accepts). The oracle router (Eval_conditional.py's ORACLE_REPORT, in the utility
gate's evaluation) scores each image on the path with the lower detector loss: its AP, the fraction of
images it derains, and the utility gate's agreement with it.
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

CONFIGS = ["configs/demo.py", "configs/demo_families.py"]
PIXEL_GATE_CONFIGS = [*CONFIGS, "configs/demo_rain_gate.py"]  # the rain and the utility gate: a small CNN on pixels
#   (the demo's rain gate's recipe; configs/demo.py's gate settings are the detector-view gate's)
WORLD_RAIN_DIR = "outputs_spdnet_adaptation/demo_families/data/coco_rain"
FAMILY_PRESETS = {"streaks": ["medium"], "drops": ["drops_heavy"], "downpour": ["downpour_medium"]}  # the world's
RUNS_DIR = "outputs_spdnet_adaptation/family_table"
TABLE_FILE = "outputs_spdnet_adaptation/family_table"  # .md and .json
ONE_THREAD = "--CPU_THREADS=1"
UTILITY_BUDGET = "--GATE_PERCENT_DATASET=25"  # 500 training scenes, as in the first table (then "gain" ran the
#   detector one image at a time, ~25 min per gate on the whole world; now batched, the budget kept for comparison)
NO_IMAGE_QUALITY = "--IMAGE_QUALITY=False"  # the table is about AP; PSNR/SSIM would add a third to each evaluation
DIVERSE_GATE = ["--EPOCH_VARIANTS=True", "--RANDOM_RAIN=0.5", "--AUGMENT_BLUR=0.3", "--AUGMENT_JPEG=0.5",
                "--AUGMENT_JITTER=0.2", "--AUGMENT_NOISE=0.03"]  # docs/rain_gate.md's diverse run
# The soft-mixed SPDNet (issue #31 item 2): the diverse adaptation's rain, plus clean images (half as many as
# rainy ones) of which half carry library weather, and the mix head trained with SPDNet
SOFT_MIX = ["--RANDOM_RAIN=0.5", "--SOFT_MIX=True", "--COCO_RATIO=0.5", "--LIBRARY_WEATHER=0.5"]
TWICE_THE_STEPS = "--PERCENT_DATASET=50"  # 1,000 rainy scenes: 125 steps, twice configs/demo.py's 63
# The routers Eval_conditional.py runs the diverse-adapted and the soft-mixed SPDNet behind: (name, gate file)
ROUTERS = [("rain_gate", "rain_gate/rain_detector.pt"), ("utility_gate", "utility_gate/utility_gate.pt"),
           ("view_gate", "view_gate/utility_gate.pt"), ("confidence", None)]
ROUTER_LABELS = {"rain_gate": "rain gate", "utility_gate": "utility gate", "view_gate": "detector-view gate",
                 "confidence": "confidence rule"}  # each router's name in the tables
SECTIONS = {
    "heldout": "held-out family's rain", "seen": "the other families' rain (in distribution)", "clean": "clean val",
}
ROWS = [  # (label, {section: (run name, split in its result file, row)})
    ("vanilla RT-DETR", {"heldout": ("eval_diverse_heldout", "rainy", "vanilla"),
                         "seen": ("cond_rain_gate", "rainy", "never"),
                         "clean": ("eval_diverse_heldout", "clean", "vanilla")}),
    ("original SPDNet + RT-DETR", {"heldout": ("eval_diverse_heldout", "rainy", "original"),
                                  "clean": ("eval_diverse_heldout", "clean", "original")}),
    ("adapted SPDNet, streaks only (as today)", {"heldout": ("eval_streaks_heldout", "rainy", "adapted"),
                                                 "clean": ("eval_streaks_heldout", "clean", "adapted")}),
    ("diverse-adapted SPDNet", {"heldout": ("eval_diverse_heldout", "rainy", "adapted"),
                                "seen": ("cond_rain_gate", "rainy", "always"),
                                "clean": ("eval_diverse_heldout", "clean", "adapted")}),
    ("always derain (diverse-adapted)", {"heldout": ("cond_rain_gate", "heldout", "always"),
                                         "seen": ("cond_rain_gate", "rainy", "always"),
                                         "clean": ("cond_rain_gate", "clean", "always")}),
    ("never derain", {"heldout": ("cond_rain_gate", "heldout", "never"), "seen": ("cond_rain_gate", "rainy", "never"),
                      "clean": ("cond_rain_gate", "clean", "never")}),
    ("rain-gated conditional", {"heldout": ("cond_rain_gate", "heldout", "gate"),
                                "seen": ("cond_rain_gate", "rainy", "gate"),
                                "clean": ("cond_rain_gate", "clean", "gate")}),
    ("utility-gated conditional", {"heldout": ("cond_utility_gate", "heldout", "gate"),
                                   "seen": ("cond_utility_gate", "rainy", "gate"),
                                   "clean": ("cond_utility_gate", "clean", "gate")}),
    ("detector-view-gated conditional", {"heldout": ("cond_view_gate", "heldout", "gate"),
                                         "seen": ("cond_view_gate", "rainy", "gate"),
                                         "clean": ("cond_view_gate", "clean", "gate")}),
    ("confidence rule (label-free)", {"heldout": ("cond_confidence", "heldout", "gate"),
                                      "seen": ("cond_confidence", "rainy", "gate"),
                                      "clean": ("cond_confidence", "clean", "gate")}),
    ("diverse-adapted SPDNet, twice the steps", {"heldout": ("eval_diverse2x_heldout", "rainy", "adapted"),
                                                 "clean": ("eval_diverse2x_heldout", "clean", "adapted")}),
    ("soft-mixed SPDNet, no gate", {"heldout": ("cond_soft_rain_gate", "heldout", "always"),
                                    "seen": ("cond_soft_rain_gate", "rainy", "always"),
                                    "clean": ("cond_soft_rain_gate", "clean", "always")}),
    *[(f"soft-mixed SPDNet behind the {label}", {section: (f"cond_soft_{router}", split, "gate")
                                                  for section, split in (("heldout", "heldout"), ("seen", "rainy"),
                                                                         ("clean", "clean"))})
      for router, label in ROUTER_LABELS.items()],
]
# The order of a (family, seed) chain: the evidence the default rule needs most first (the routers that the
# other families' runs leave in the running), the slowest last (the confidence rule runs SPDNet on every image)
CHAIN_ORDER = ["diverse_adapted", "soft_adapted", "rain_gate", "view_gate", "cond_rain_gate", "cond_view_gate",
               "cond_soft_rain_gate", "cond_soft_view_gate", "utility_gate", "cond_utility_gate",
               "eval_diverse_heldout", "eval_streaks_heldout", "eval_diverse_streaks", "eval_soft_streaks",
               "cond_confidence", "cond_soft_utility_gate", "cond_soft_confidence", "diverse2x_adapted",
               "eval_diverse2x_heldout"]
# What each router costs per image (Eval_conditional.py's gate row, ms per image): on clean val and on held-out rain
COST_ROWS = [*[(label, f"cond_{router}") for router, label in ROUTER_LABELS.items()],
             *[(f"soft-mixed SPDNet behind the {ROUTER_LABELS[router]}", f"cond_soft_{router}")
               for router in ("rain_gate", "view_gate")]]
ORACLE_ROWS = [  # the oracle router (Eval_conditional.py's ORACLE_REPORT): its AP, then agreement and fraction
    ("oracle router (the path with the lower detector loss)", "cond_utility_gate", "router_ap"),
    ("oracle router: utility gate agrees", "cond_utility_gate", "agreement"),
    ("oracle router: fraction it derains", "cond_utility_gate", "oracle_fraction"),
]
SPLIT_OF_SECTION = {"heldout": "heldout", "seen": "rainy", "clean": "clean"}
# The rule that picks the default (docs/unseen_rain.md, stated before any result): each candidate (label, the run
# that scored it, its row there), its worst seen and clean regret over every run and seed; ties within TIE go to
# the lower ms per clean image
CANDIDATES = [*[(f"diverse-adapted SPDNet behind the {label}", f"cond_{router}", "gate")
                for router, label in ROUTER_LABELS.items()],
              ("soft-mixed SPDNet, no gate", "cond_soft_rain_gate", "always"),
              *[(f"soft-mixed SPDNet behind the {label}", f"cond_soft_{router}", "gate")
                for router, label in ROUTER_LABELS.items()]]
TIE = 0.005
RESULT_FILES = {"Training_SPDNet_Adaptation.py": "spdnet_adapted.pt", "Training_Rain_Detector.py": "rain_detector.pt",
                "Training_Utility_Gate.py": "utility_gate.pt", "Eval_SPDNet_Adaptation.py": "eval_results.json",
                "Eval_conditional.py": "conditional_results.json"}
CHECKPOINT_FILES = {"Training_SPDNet_Adaptation.py": "checkpoint.pt",  # a training stopped half-way continues from it
                    "Training_Rain_Detector.py": "rain_detector_checkpoint.pt",
                    "Training_Utility_Gate.py": "utility_gate_checkpoint.pt"}


def variant_dirs(families: list[str]) -> str:
    """The world's variant folders of ``families``, as one COCO_RAIN_DIR (os.pathsep-joined)."""
    return os.pathsep.join(f"{WORLD_RAIN_DIR}/{preset}_v0" for family in families for preset in FAMILY_PRESETS[family])


def seed_dir(seed: int) -> str:
    return f"{RUNS_DIR}/seed{seed}"


def family_dir(family: str, seed: int) -> str:
    return f"{RUNS_DIR}/{family}/seed{seed}"


def job(name: str, family: str | None, seed: int, script: str, output_dir: str, *settings: str,
        needs: tuple[str, ...] = (), configs: list[str] = CONFIGS) -> dict:
    """One planned run: ``python script configs settings`` writing RESULT_FILES[script] into output_dir."""
    command = [script, *configs, f"--OUTPUT_DIR={output_dir}", *settings, ONE_THREAD]
    return {"name": name, "family": family, "seed": seed, "command": command, "output_dir": output_dir,
            "result": f"{output_dir}/{RESULT_FILES[script]}", "needs": list(needs)}


def plan(families: list[str], seeds: list[int]) -> list[dict]:
    """Every run, in an order that runs each one after those it needs (``needs``: result paths)."""
    jobs = []
    for seed in seeds:
        jobs.append(job("streaks_adapted", None, seed, "Training_SPDNet_Adaptation.py",
                        f"{seed_dir(seed)}/streaks_adapted", f"--SEED={seed}",
                        f"--COCO_RAIN_DIR={variant_dirs(['streaks'])}"))
    for family in families:
        for seed in seeds:
            base = family_dir(family, seed)
            streaks = f"{seed_dir(seed)}/streaks_adapted/spdnet_adapted.pt"
            diverse = f"{base}/diverse_adapted/spdnet_adapted.pt"
            soft, twice = f"{base}/soft_adapted/spdnet_adapted.pt", f"{base}/diverse2x_adapted/spdnet_adapted.pt"
            holdout = f"--HOLDOUT_FAMILY={family}"
            utility = [f"--SEED={seed}", holdout, "--UTILITY_MODE=gain", UTILITY_BUDGET, f"--ADAPTED_WEIGHTS={diverse}"]
            chain = [
                job("diverse_adapted", family, seed, "Training_SPDNet_Adaptation.py", f"{base}/diverse_adapted",
                    f"--SEED={seed}", holdout, "--RANDOM_RAIN=0.5"),
                job("soft_adapted", family, seed, "Training_SPDNet_Adaptation.py", f"{base}/soft_adapted",
                    f"--SEED={seed}", holdout, *SOFT_MIX),
                job("rain_gate", family, seed, "Training_Rain_Detector.py", f"{base}/rain_gate", f"--SEED={seed}",
                    holdout, *DIVERSE_GATE, configs=PIXEL_GATE_CONFIGS),
                job("view_gate", family, seed, "Training_Utility_Gate.py", f"{base}/view_gate", *utility,
                    "--ARCHITECTURE=detector_view", needs=(diverse,)),
                job("utility_gate", family, seed, "Training_Utility_Gate.py", f"{base}/utility_gate", *utility,
                    needs=(diverse,), configs=PIXEL_GATE_CONFIGS),
            ]
            for spdnet, weights in (("diverse", diverse), ("soft", soft)):  # the routers, cheapest evidence first
                for router, gate in ROUTERS:
                    name = f"cond_{router}" if spdnet == "diverse" else f"cond_soft_{router}"
                    gate_weights = f"{base}/{gate}" if gate else "confidence_rule"
                    chain.append(job(name, family, seed, "Eval_conditional.py", f"{base}/{name}", holdout,
                                    f"--ORACLE_REPORT={router == 'utility_gate' and spdnet == 'diverse'}",
                                    f"--ADAPTED_WEIGHTS={weights}", f"--GATE_WEIGHTS={gate_weights}",
                                    needs=(weights, *([f"{base}/{gate}"] if gate else []))))
            chain.append(job("diverse2x_adapted", family, seed, "Training_SPDNet_Adaptation.py",
                            f"{base}/diverse2x_adapted", f"--SEED={seed}", holdout, "--RANDOM_RAIN=0.5",
                            TWICE_THE_STEPS))
            for adapted, weights in (("streaks", streaks), ("diverse", diverse), ("diverse2x", twice)):
                chain.append(job(f"eval_{adapted}_heldout", family, seed, "Eval_SPDNet_Adaptation.py",
                                f"{base}/eval_{adapted}_heldout", f"--COCO_RAIN_DIR={variant_dirs([family])}",
                                "--EVAL_CLEAN=True", NO_IMAGE_QUALITY, f"--ADAPTED_WEIGHTS={weights}",
                                needs=(weights,)))
            if family != "streaks":  # the diverse-adapted (issue #24's goal 3) and the soft-mixed SPDNet (#31's
                for adapted, weights in (("diverse", diverse), ("soft", soft)):  # goal) on the demo's streak rain
                    chain.append(job(f"eval_{adapted}_streaks", family, seed, "Eval_SPDNet_Adaptation.py",
                                     f"{base}/eval_{adapted}_streaks", f"--COCO_RAIN_DIR={variant_dirs(['streaks'])}",
                                     NO_IMAGE_QUALITY, f"--ADAPTED_WEIGHTS={weights}", needs=(weights,)))
            jobs += sorted(chain, key=lambda item: CHAIN_ORDER.index(item["name"]))
    return jobs


def only(jobs: list[dict], names: list[str]) -> list[dict]:
    """The jobs called one of ``names`` and, before them, every job whose result they need, in plan order."""
    by_result = {item["result"]: item for item in jobs}
    wanted = [item for item in jobs if item["name"] in names]
    keep: set[str] = set()
    while wanted:
        item = wanted.pop()
        if item["result"] not in keep:
            keep.add(item["result"])
            wanted += [by_result[needed] for needed in item["needs"] if needed in by_result]
    return [item for item in jobs if item["result"] in keep]


def stopped_half_way(item: dict) -> bool:
    """A training job whose checkpoint is on disk but not its result: it continues (--RESUME=True)."""
    checkpoint = CHECKPOINT_FILES.get(item["command"][0])
    return checkpoint is not None and os.path.exists(os.path.join(ROOT, item["output_dir"], checkpoint))


def run_job(item: dict) -> float:
    """Run one planned job unless its result is on disk (resumable: a training stopped half-way
    continues from its checkpoint); its wall seconds (0 when skipped)."""
    if os.path.exists(os.path.join(ROOT, item["result"])):
        return 0.0
    for needed in item["needs"]:
        if not os.path.exists(os.path.join(ROOT, needed)):
            raise SystemExit(f"{item['name']}: {needed} is missing (its run failed?)")
    os.makedirs(os.path.join(ROOT, item["output_dir"]), exist_ok=True)
    command = [*item["command"], "--RESUME=True"] if stopped_half_way(item) else item["command"]
    seconds = run_script(command, os.path.join(ROOT, item["output_dir"], "run.log"), 1)
    print(f"{item['family'] or 'shared'}, seed {item['seed']}, {item['name']}: done in {seconds:.0f} s", flush=True)
    return seconds


def run_all(jobs: list[dict], workers: int) -> None:
    """The shared streak-only adaptations first, then each (family, seed) chain in order, ``workers`` at once."""
    shared = [item for item in jobs if item["family"] is None]
    chains: dict[tuple[str, int], list[dict]] = {}
    for item in jobs:
        if item["family"] is not None:
            chains.setdefault((item["family"], item["seed"]), []).append(item)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run_job, shared))
        list(pool.map(lambda chain: [run_job(item) for item in chain], chains.values()))


def read_json(path: str) -> dict | None:
    full = os.path.join(ROOT, path)
    if not os.path.isfile(full):
        return None
    with open(full) as file:
        return json.load(file)


def collect(families: list[str], seeds: list[int]) -> list[dict]:
    """Per (family, seed): the result files of its evaluations that are on disk."""
    runs = []
    for family in families:
        for seed in seeds:
            base = family_dir(family, seed)
            results = {}
            for name in ("eval_streaks_heldout", "eval_diverse_heldout", "eval_diverse2x_heldout",
                         "eval_diverse_streaks", "eval_soft_streaks"):
                results[name] = read_json(f"{base}/{name}/{RESULT_FILES['Eval_SPDNet_Adaptation.py']}")
            for name in [f"cond_{prefix}{router}" for prefix in ("", "soft_") for router, _ in ROUTERS]:
                results[name] = read_json(f"{base}/{name}/{RESULT_FILES['Eval_conditional.py']}")
            runs.append({"family": family, "seed": seed, "results": results})
    return runs


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (min–max), over the seeds that have the value."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def cell_value(results: dict, source: str, split: str, key: str) -> float | None:
    result = results.get(source)
    if result is None or split not in result:
        return None
    if key in ("agreement", "oracle_fraction", "router_ap"):
        oracle = result[split].get("oracle")
        if oracle is None or (key == "router_ap" and "router" not in oracle):
            return None
        if key == "router_ap":
            return oracle["router"]["AP"]
        return oracle["agreement"] if key == "agreement" else oracle["oracle_derains"] / oracle["images"]
    return result[split][key]["AP"] if key in result[split] else None


def values(runs: list[dict], family: str, source: str, split: str, key: str) -> list[float]:
    found = [cell_value(run["results"], source, split, key) for run in runs if run["family"] == family]
    return [value for value in found if value is not None]


def milliseconds(runs: list[dict], family: str, source: str, split: str) -> str:
    """The router's ms per image on ``split`` (its gate row: the gate and whichever path each image took)."""
    found = [run["results"].get(source) for run in runs if run["family"] == family]
    cells = [result[split]["gate"]["ms_per_image"] for result in found if result and split in result]
    return f"{statistics.mean(cells):.1f}" if cells else "–"


def table(runs: list[dict], families: list[str]) -> str:
    lines = []
    for family in families:
        seeds = len({run["seed"] for run in runs if run["family"] == family})
        lines += [f"### {family} held out ({seeds} seeds; COCO AP, mean ± spread (min–max))", "",
                  "| pipeline | " + " | ".join(SECTIONS.values()) + " |", "|---" * (len(SECTIONS) + 1) + "|"]
        for label, sources in ROWS:
            cells = [spread(values(runs, family, *sources[section])) if section in sources else "–"
                     for section in SECTIONS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, source, key in ORACLE_ROWS:
            cells = [spread(values(runs, family, source, SPLIT_OF_SECTION[section], key)) for section in SECTIONS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "| router: ms per image (one thread) | clean val | held-out rain |", "|---|---|---|"]
        for label, source in COST_ROWS:
            cells = [milliseconds(runs, family, source, split) for split in ("clean", "heldout")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += streak_table(runs, families)
    lines += rule_table(runs)
    lines.append("Oracle rows: the oracle router (per image, the path with the lower detector loss; the "
                 "diverse-adapted SPDNet) as AP, the utility gate's agreement with its decisions, and the fraction "
                 "of images it derains.")
    return "\n".join(lines)


def streak_table(runs: list[dict], families: list[str]) -> list[str]:
    """The demo's streak rain (in distribution for every SPDNet but the one adapted with streaks held
    out): the streak-only adapted SPDNet against each diverse-adapted one, on this world's streak variant."""
    rows = [("vanilla RT-DETR", "streaks", "eval_streaks_heldout", "vanilla"),
            ("original SPDNet + RT-DETR", "streaks", "eval_streaks_heldout", "original"),
            ("adapted SPDNet, streaks only (as today)", "streaks", "eval_streaks_heldout", "adapted")]
    rows += [(f"{kind} SPDNet, {family} held out", family, f"eval_{adapted}_streaks", "adapted")
             for family in families if family != "streaks"
             for kind, adapted in (("diverse-adapted", "diverse"), ("soft-mixed", "soft"))]
    found = [(label, values(runs, family, source, "rainy", row)) for label, family, source, row in rows]
    if not any(cells for _, cells in found):
        return []
    lines = ["### the demo's streak rain (in distribution; COCO AP, mean ± spread (min–max))", "",
             "| pipeline | streak rain |", "|---|---|"]
    lines += [f"| {label} | {spread(cells)} |" for label, cells in found]
    return lines + [""]


def regrets(results: dict, source: str, row: str) -> tuple[float, float] | None:
    """One candidate in one run: (seen regret, clean regret), its AP on the seen families' rain minus the better
    of always and never derain there (the diverse-adapted SPDNet's), and its clean-val AP minus the frozen
    detector's; None while either result file is missing."""
    candidate, reference = results.get(source), results.get("cond_rain_gate")
    if candidate is None or reference is None:
        return None
    best_seen = max(reference["rainy"]["always"]["AP"], reference["rainy"]["never"]["AP"])
    return (candidate["rainy"][row]["AP"] - best_seen,
            candidate["clean"][row]["AP"] - reference["clean"]["never"]["AP"])


def default_rule(runs: list[dict]) -> list[dict]:
    """Every candidate's score (its worst regret over the runs that have it), runs counted and mean ms per clean
    image, best first: the highest score, ties (within TIE of the best) to the lower ms per clean image."""
    scored = []
    for label, source, row in CANDIDATES:
        found = [(run, regrets(run["results"], source, row)) for run in runs]
        found = [(run, pair) for run, pair in found if pair is not None]
        if not found:
            continue
        ms = statistics.mean(run["results"][source]["clean"][row]["ms_per_image"] for run, _ in found)
        scored.append({"label": label, "runs": len(found), "ms_clean": ms,
                       "seen": min(pair[0] for _, pair in found), "clean": min(pair[1] for _, pair in found),
                       "score": min(min(pair) for _, pair in found)})
    if not scored:
        return []
    best = max(item["score"] for item in scored)
    tied = sorted((item for item in scored if item["score"] >= best - TIE), key=lambda item: item["ms_clean"])
    rest = sorted((item for item in scored if item["score"] < best - TIE), key=lambda item: -item["score"])
    return tied + rest


def rule_table(runs: list[dict]) -> list[str]:
    """The default rule's table: every candidate's worst seen and clean regret and its score, the winner first."""
    ranked = default_rule(runs)
    if not ranked:
        return []
    lines = ["### the default rule (seen rain and clean val only; worst over the runs on disk)", "",
             "| candidate | runs | worst seen regret | worst clean regret | score | ms per clean image |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {item['label']} | {item['runs']} | {item['seen']:+.4f} | {item['clean']:+.4f} | "
              f"{item['score']:+.4f} | {item['ms_clean']:.1f} |" for item in ranked]
    return lines + ["", f"Chosen by the rule: {ranked[0]['label']}.", ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILY_PRESETS), choices=list(FAMILY_PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each on one thread")
    parser.add_argument("--only", nargs="+", choices=["streaks_adapted", *CHAIN_ORDER],
                        help="these runs (and the runs they need) only, e.g. --only cond_soft_view_gate")
    parser.add_argument("--dry-run", action="store_true", help="print the planned commands, run nothing")
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished runs, run nothing")
    args = parser.parse_args(argv)
    jobs = plan(args.families, args.seeds)
    if args.only:
        jobs = only(jobs, args.only)
    if args.dry_run:
        print("python Make_Demo.py " + " ".join(CONFIGS))
        for item in jobs:
            state = ("done" if os.path.exists(os.path.join(ROOT, item["result"])) else
                     "to resume" if stopped_half_way(item) else "to run")
            print(f"# {item['family'] or 'shared'}, seed {item['seed']}, {item['name']} ({state})")
            print("python " + " ".join(item["command"]))
        return
    if not args.collect_only:
        make_log = os.path.join(ROOT, RUNS_DIR, "make_demo.log")
        os.makedirs(os.path.dirname(make_log), exist_ok=True)
        run_script(["Make_Demo.py", *CONFIGS], make_log, 1)  # the world (and its own gate) once, before the runs
        run_all(jobs, args.jobs)
    runs = collect(args.families, args.seeds)
    text = table(runs, args.families)
    print(text)
    os.makedirs(os.path.dirname(os.path.join(ROOT, TABLE_FILE)), exist_ok=True)
    for suffix, content in (("md", text + "\n"), ("json", json.dumps(runs, indent=2))):
        with open(os.path.join(ROOT, f"{TABLE_FILE}.{suffix}"), "w") as file:
            file.write(content)


if __name__ == "__main__":
    main()

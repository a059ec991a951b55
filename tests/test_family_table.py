"""tools/family_table.py: its plan (no run) and its table from fake results on disk."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import family_table  # noqa: E402

FAMILIES = ["streaks", "drops", "downpour"]


def test_dry_run_holds_out_each_family_on_one_thread():
    output = subprocess.run([sys.executable, "tools/family_table.py", "--dry-run"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    commands = [line[len("python "):].split() for line in output.splitlines() if line.startswith("python ")]
    assert commands[0][0] == "Make_Demo.py"
    runs = commands[1:]
    assert all("--CPU_THREADS=1" in command for command in runs)
    training = [c for c in runs if c[0] in family_table.CHECKPOINT_FILES]
    # streak-only per seed; per family and seed: three adaptations (diverse, soft-mixed, twice the steps), three gates
    assert len(training) == 2 + 3 * 6 * 2
    soft = [c for c in training if "/soft_adapted" in " ".join(c)]
    assert len(soft) == 6 and all({"--SOFT_MIX=True", "--LIBRARY_WEATHER=0.5", "--COCO_RATIO=0.5"} <= set(c)
                                  for c in soft)
    views = [c for c in training if "/view_gate" in " ".join(c)]
    assert len(views) == 6 and all("--ARCHITECTURE=detector_view" in c for c in views)
    for family in FAMILIES:
        presets = family_table.FAMILY_PRESETS[family]
        of_family = [c for c in training if f"--OUTPUT_DIR={family_table.RUNS_DIR}/{family}/" in " ".join(c)]
        assert len(of_family) == 6 * 2
        assert all(f"--HOLDOUT_FAMILY={family}" in c for c in of_family)
        if family != "streaks":  # the streak-only adaptation (as today) holds out every family but streaks
            shared = [c for c in training if "/streaks_adapted" in " ".join(c)
                      and "--HOLDOUT_FAMILY" not in " ".join(c)]
            assert len(shared) == 2
            for command in shared:
                rain = next(arg for arg in command if arg.startswith("--COCO_RAIN_DIR="))
                assert not any(f"/{preset}_v0" in rain for preset in presets)
    conditional = [c for c in runs if c[0] == "Eval_conditional.py"]
    assert len(conditional) == 3 * 2 * 8  # four routers, each behind the diverse-adapted and the soft-mixed SPDNet
    for command in conditional:
        oracle = "--ORACLE_REPORT=True" if "/cond_utility_gate" in " ".join(command) else "--ORACLE_REPORT=False"
        assert oracle in command and any(a.startswith("--HOLDOUT_FAMILY=") for a in command)
        assert ("--GATE_WEIGHTS=confidence_rule" in command) == ("confidence" in " ".join(command))
        assert ("/soft_adapted/" in " ".join(command)) == ("/cond_soft_" in " ".join(command))
    for seed in (42, 7):
        assert sum(f"--SEED={seed}" in c for c in training) == 1 + 3 * 6


def fake_eval(ap: float) -> dict:
    metrics = {name: {"AP": ap + shift, "AP50": 0.9, "ms_per_image": 1.0}
               for name, shift in (("vanilla", 0.0), ("original", 0.1), ("adapted", 0.2))}
    return {"rainy": metrics, "clean": metrics}


def fake_conditional(ap: float) -> dict:
    split = {row: {"AP": ap + shift, "ms_per_image": 10 * ap}
             for row, shift in (("gate", 0.05), ("always", 0.2), ("never", 0.0))}
    split["oracle"] = {"agreement": ap, "precision": 1.0, "recall": 1.0, "oracle_derains": 5, "gate_derains": 5,
                       "images": 10, "router": {"AP": ap + 0.1}}
    return {name: split for name in ("clean", "rainy", "mixed", "heldout", "heldout_mixed")}


def write(path, content) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        json.dump(content, file)


def test_collect_only_tabulates_mean_and_spread(tmp_path, monkeypatch, capsys):
    for seed, ap in ((42, 0.3), (7, 0.5)):
        base = tmp_path / family_table.family_dir("drops", seed)
        for name in ("eval_streaks_heldout", "eval_streaks_seen", "eval_diverse_heldout", "eval_diverse_seen",
                     "eval_diverse_streaks"):
            write(str(base / name / "eval_results.json"), fake_eval(ap))
        for name in ("cond_rain_gate", "cond_utility_gate", "cond_view_gate", "cond_soft_rain_gate"):
            write(str(base / name / "conditional_results.json"), fake_conditional(ap))
    monkeypatch.setattr(family_table, "ROOT", str(tmp_path))
    family_table.main(["--collect-only", "--families", "drops", "streaks"])
    text = (tmp_path / f"{family_table.TABLE_FILE}.md").read_text()
    drops = text.split("### streaks held out")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in drops.splitlines() if line.startswith("| ")}
    assert "0.400 ± 0.141 (0.300–0.500)" in rows["vanilla RT-DETR"]  # mean 0.4, stdev of (0.3, 0.5)
    assert "0.600 ± 0.141 (0.500–0.700)" in rows["diverse-adapted SPDNet"]
    assert "0.450 ± 0.141 (0.350–0.550)" in rows["rain-gated conditional"]
    assert "0.500 ± 0.000 (0.500–0.500)" in rows["oracle router: fraction it derains"]
    assert "0.500 ± 0.141 (0.400–0.600)" in rows["oracle router (the path with the lower detector loss)"]
    assert "0.450 ± 0.141 (0.350–0.550)" in rows["detector-view-gated conditional"]
    assert rows["soft-mixed SPDNet, no gate"].count("0.600 ± 0.141 (0.500–0.700)") == 3  # its "always" row
    assert rows["confidence rule (label-free)"] == "| confidence rule (label-free) | – | – | – |"  # not on disk
    assert rows["router: ms per image (one thread)"].endswith("| clean val | held-out rain |")
    assert rows["detector-view gate"] == "| detector-view gate | 4.0 | 4.0 |"  # mean of 3.0 and 5.0
    streak = text.split("### the demo's streak rain")[1]
    assert "| diverse-adapted SPDNet, drops held out | 0.600 ± 0.141 (0.500–0.700) |" in streak
    assert "| soft-mixed SPDNet, drops held out | – |" in streak  # its evaluation not on disk
    assert "| adapted SPDNet, streaks only (as today) | – |" in streak  # no streaks-held-out run on disk
    assert "### drops held out (2 seeds" in text and "### streaks held out" in text
    streaks = text.split("### streaks held out")[1]
    assert "| vanilla RT-DETR | – | – | – |" in streaks  # nothing on disk: empty cells, no failure
    runs = json.loads((tmp_path / f"{family_table.TABLE_FILE}.json").read_text())
    assert {(run["family"], run["seed"]) for run in runs} == {(f, s) for f in ("drops", "streaks") for s in (42, 7)}
    assert "0.400 ± 0.141" in capsys.readouterr().out


@pytest.mark.parametrize("family", FAMILIES)
def test_variant_dirs_name_the_worlds_presets(family):
    folders = family_table.variant_dirs([family]).split(os.pathsep)
    assert folders == [f"{family_table.WORLD_RAIN_DIR}/{p}_v0" for p in family_table.FAMILY_PRESETS[family]]


def test_only_keeps_the_named_runs_and_what_they_need_in_plan_order():
    jobs = family_table.plan(["drops"], [42, 7])
    kept = family_table.only(jobs, ["cond_soft_utility_gate", "eval_streaks_heldout"])
    names = [(item["name"], item["seed"]) for item in kept]
    # the soft-mixed SPDNet and the utility gate (which needs the diverse-adapted one); the shared streak-only run
    for seed in (42, 7):
        assert {name for name, s in names if s == seed} == {
            "streaks_adapted", "diverse_adapted", "soft_adapted", "utility_gate", "cond_soft_utility_gate",
            "eval_streaks_heldout"}
    assert kept == [item for item in jobs if item in kept]  # each after what it needs
    assert family_table.only(jobs, ["soft_adapted"]) == [item for item in jobs if item["name"] == "soft_adapted"]


def test_a_training_stopped_half_way_continues_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(family_table, "ROOT", str(tmp_path))
    ran = []
    monkeypatch.setattr(family_table, "run_script", lambda command, log, threads: ran.append(command) or 1.0)
    jobs = {item["name"]: item for item in family_table.plan(["drops"], [42]) if item["family"] == "drops"}
    adaptation, gate = jobs["diverse_adapted"], jobs["utility_gate"]
    write(str(tmp_path / adaptation["output_dir"] / "checkpoint.pt"), "")  # stopped half-way
    assert family_table.run_job(adaptation) == 1.0
    write(str(tmp_path / adaptation["result"]), "")  # (the fake run wrote nothing)
    assert gate["needs"] == [adaptation["result"]] and family_table.run_job(gate) == 1.0
    assert ran == [[*adaptation["command"], "--RESUME=True"], gate["command"]]  # the gate starts afresh
    assert family_table.run_job(adaptation) == 0.0 and len(ran) == 2  # finished: skipped


def test_the_tools_file_names_are_the_scripts_own():
    from utils.apps import gate_training, pipelines, utility_gate

    assert family_table.CHECKPOINT_FILES == {
        "Training_SPDNet_Adaptation.py": pipelines.CHECKPOINT_FILE,
        "Training_Rain_Detector.py": gate_training.GATE_CHECKPOINT_FILE,
        "Training_Utility_Gate.py": utility_gate.UTILITY_CHECKPOINT_FILE}
    assert {script: family_table.RESULT_FILES[script] for script in family_table.CHECKPOINT_FILES} == {
        "Training_SPDNet_Adaptation.py": pipelines.ADAPTED_FILE, "Training_Rain_Detector.py": pipelines.GATE_FILE,
        "Training_Utility_Gate.py": pipelines.UTILITY_GATE_FILE}


def rule_result(seen: float, clean: float, ms: float, row: str = "gate") -> dict:
    """A conditional result whose ``row`` scores ``seen`` on the seen rain and ``clean`` on clean val; always and
    never derain score 0.40 and 0.30 on the seen rain, the frozen detector 0.90 on clean val."""
    result = {"rainy": {"always": {"AP": 0.40, "ms_per_image": ms}, "never": {"AP": 0.30, "ms_per_image": 1.0}},
              "clean": {"always": {"AP": 0.60, "ms_per_image": ms}, "never": {"AP": 0.90, "ms_per_image": 1.0}}}
    result["rainy"]["gate"] = {"AP": 0.30, "ms_per_image": ms}  # (a gate that routed every image clean)
    result["clean"]["gate"] = {"AP": 0.90, "ms_per_image": ms}
    result["rainy"][row] = {"AP": seen, "ms_per_image": ms}
    result["clean"][row] = {"AP": clean, "ms_per_image": ms}
    return result


def test_the_default_rule_takes_the_worst_regret_and_breaks_ties_by_clean_cost():
    runs = [  # per run: the rain gate, the detector-view gate, the soft-mixed SPDNet with no gate
        {"family": "drops", "seed": 42, "results": {
            "cond_rain_gate": rule_result(0.45, 0.895, 10.0), "cond_view_gate": rule_result(0.42, 0.899, 20.0),
            "cond_soft_rain_gate": rule_result(0.50, 0.80, 30.0, row="always")}},
        {"family": "drops", "seed": 7, "results": {
            "cond_rain_gate": rule_result(0.41, 0.899, 12.0), "cond_view_gate": rule_result(0.38, 0.899, 22.0),
            "cond_soft_rain_gate": rule_result(0.50, 0.88, 30.0, row="always")}},
    ]
    ranked = family_table.default_rule(runs)
    by_label = {item["label"]: item for item in ranked}
    rain = by_label["diverse-adapted SPDNet behind the rain gate"]
    view = by_label["diverse-adapted SPDNet behind the detector-view gate"]
    soft = by_label["soft-mixed SPDNet, no gate"]
    behind = by_label["soft-mixed SPDNet behind the rain gate"]  # its gate row: every image routed clean
    assert behind["seen"] == pytest.approx(-0.10) and behind["clean"] == pytest.approx(0.0)
    assert rain["runs"] == view["runs"] == 2 and len(ranked) == 4  # candidates with no result file are left out
    assert rain["seen"] == pytest.approx(0.01) and rain["clean"] == pytest.approx(-0.005)  # 0.41 - 0.40, 0.895 - 0.9
    assert rain["score"] == pytest.approx(-0.005) and rain["ms_clean"] == pytest.approx(11.0)
    assert view["score"] == pytest.approx(-0.02)  # seed 7: 0.38 against always 0.40
    assert soft["seen"] == pytest.approx(0.10) and soft["score"] == pytest.approx(-0.10)  # seed 42: 0.80 clean
    assert [item["label"] for item in ranked] == [rain["label"], view["label"], soft["label"], behind["label"]]
    runs[0]["results"]["cond_view_gate"] = rule_result(0.42, 0.899, 20.0)
    runs[1]["results"]["cond_view_gate"] = rule_result(0.397, 0.899, 1.0)  # within TIE of the rain gate, cheaper
    ranked = family_table.default_rule(runs)
    assert ranked[0]["label"] == view["label"] and ranked[0]["score"] == pytest.approx(-0.003)
    assert ranked[1]["label"] == rain["label"]  # also within TIE (-0.005 against the best -0.003): 11 ms against 10.5
    text = "\n".join(family_table.rule_table(runs))
    assert f"Chosen by the rule: {view['label']}." in text

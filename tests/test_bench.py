"""benchmarks/bench.py's measuring pieces, and smoke runs of the benchmarks at toy size."""

import json

import pytest
import torch

from benchmarks import bench, bench_objectives, bench_precision


def test_configuration_names():
    assert bench.parse_configuration("bf16+ckpt+cl") == {
        "precision": "bf16", "checkpointing": True, "channels_last": True, "compile": "off"}
    assert bench.parse_configuration("fp32") == {
        "precision": "fp32", "checkpointing": False, "channels_last": False, "compile": "off"}
    assert bench.parse_configuration("bf16+ckpt+cl+compile")["compile"] == "default"
    assert bench.parse_configuration("fp32+compile:reduce-overhead")["compile"] == "reduce-overhead"
    assert bench.eager_counterpart("bf16+ckpt+cl+compile:max-autotune") == "bf16+ckpt+cl"
    for bad in ("fp16+ckpt", "fp32+compile:fastest", "fp32+compile+compile:default", "fp32+cuda"):
        with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
            bench.parse_configuration(bad)


def test_saved_tensor_counter_counts_live_saved_bytes_once_per_storage():
    counter = bench.SavedTensorCounter()
    weight = torch.ones(256, 256, requires_grad=True)  # 256 KiB
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        hidden = weight * weight  # saves weight (once, although twice referenced)
        loss = (hidden.exp()).sum()  # saves exp's output
    assert counter.peak == 2 * 256 * 256 * 4
    loss.backward()
    del hidden, loss
    assert counter.current == 0  # everything released after backward


def test_benchmark_smoke_run_writes_its_report(tmp_path):
    report = bench.main([
        "--IMAGE_SIZE=128", "--MEMORY_IMAGE_SIZE=128", "--RUNS=1", "--WARMUP=0", "--LOADER_IMAGES=2",
        "--CONFIGURATIONS=['fp32', 'bf16+ckpt+cl']", "--SPDNET_N_FEATS=8", "--SPDNET_N_RESBLOCKS=1",
        "--DEVICE=cpu", f"--OUTPUT_DIR={tmp_path}",
    ])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for entry in saved["configurations"].values():
        assert entry["images_per_s"] > 0 and entry["tflops"] > 0
        assert entry["peak_gb_per_image"] > 0 and entry["saved_gb_per_image"] > 0 and entry["warmup_seconds"] > 0
    assert saved["configurations"]["fp32"]["speedup_vs_fp32"] == 1.0
    assert all("speedup_vs_eager" not in entry for entry in saved["configurations"].values())  # no compiled one
    # a figure, not a timed assertion: under load the one unwarmed run may even be slower on the clean path
    assert saved["conditional"]["clean_path_speedup"] > 0 and saved["loader_images_per_s_per_worker"] > 0


def test_the_micro_batch_memory_table_grows_with_the_micro_batch(tmp_path):
    report = bench.main([
        "--TIMING=False", "--MEMORY_IMAGE_SIZE=128", "--MICRO_BATCHES=[1, 4]", "--CONFIGURATIONS=['fp32']",
        "--SPDNET_N_FEATS=8", "--SPDNET_N_RESBLOCKS=1", "--DEVICE=cpu", f"--OUTPUT_DIR={tmp_path}",
    ])
    row = report["micro_batch_memory"]["fp32"]
    assert set(row) == {"1", "4"} and 0 < row["1"] < row["4"]
    assert report["configurations"] == {} and "conditional" not in report  # no timing asked for


def test_precision_benchmark_smoke_run_writes_its_report(tmp_path):
    report = bench_precision.main([
        "--DETECTOR_STEPS=2", "--SPDNET_STEPS=2", "--BATCHES=2", "--BATCH_SIZE=2", f"--OUTPUT_DIR={tmp_path}",
    ])
    saved = json.loads((tmp_path / "bench_precision.json").read_text())
    assert saved == json.loads(json.dumps(report)) and len(saved["batches"]) == 2
    for row in saved["batches"]:
        assert row["bf16"]["image_grey_levels"] > 0  # bf16 really ran: its image differs from fp32's
        # sigma 0.1 grey level: mean |noise| 0.08, less where the image is clamped to 0 or 1.
        assert 0 < row["fp32_noise_0.1"]["image_grey_levels"] < 0.1
        assert all("gradient" not in entry for entry in row.values() if isinstance(entry, dict))


def test_objectives_benchmark_smoke_run_times_every_objective():
    seconds = bench_objectives.main(["--IMAGE_SIZE=64", "--BATCH_SIZE=1", "--STEPS=1", "--WARMUP=0", "--DEVICE=cpu"])
    assert set(seconds) == set(bench_objectives.OBJECTIVES) and all(value > 0 for value in seconds.values())

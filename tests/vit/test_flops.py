"""The MFU numerator (model FLOPs per image) against a count by hand, and the peak it is divided by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.vit.tiny_specs import SYNTHETIC, TINY_MODEL
from vit import flops
from vit.flops import PeakKind, datasheet_bf16_tflops, device_peak, forward_flops, training_flops_per_image
from vit.model import model_config
from vit.train import main


def test_ti16_at_224_matches_a_hand_count() -> None:
    # Ti/16 @ 224 px, 1000 classes: N = 14·14 + 1 = 197 tokens, D = 192, MLP 768, 12 blocks, 2 FLOPs per MAC.
    qkv = 2 * 197 * 192 * 576  # 43,573,248
    proj = 2 * 197 * 192 * 192  # 14,524,416
    fc1 = fc2 = 2 * 197 * 192 * 768  # 58,097,664 each
    scores = mix = 2 * 197 * 197 * 192  # QK^T and AV: 14,902,656 each
    block = qkv + proj + fc1 + fc2 + scores + mix  # 204,098,304
    patch_embed = 2 * 196 * (3 * 16 * 16) * 192  # 57,802,752
    head = 2 * 192 * 1000  # 384,000
    by_hand = 12 * block + patch_embed + head
    assert by_hand == 2_507_366_400  # ~1.25 GMACs, timm's published figure for vit_tiny_patch16_224

    cfg = model_config("Ti/16", num_classes=1000, image_size=224)
    assert forward_flops(cfg) == by_hand
    assert training_flops_per_image(cfg) == 3 * by_hand


def test_b16_needs_about_105_gflop_per_training_image() -> None:
    cfg = model_config("B/16", num_classes=1000, image_size=224)
    assert training_flops_per_image(cfg) / 1e9 == pytest.approx(105.4, abs=0.1)


def test_a_gpu_name_finds_its_datasheet_row_specific_names_first() -> None:
    assert datasheet_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert datasheet_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert datasheet_bf16_tflops("NVIDIA H200") == 989.0
    assert datasheet_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert datasheet_bf16_tflops("NVIDIA L40S") == 362.0
    assert datasheet_bf16_tflops("Tesla V100-SXM2-16GB") is None  # no bf16: measured instead


def test_the_cpu_peak_is_a_measured_fp32_matmul() -> None:
    peak = device_peak(torch.device("cpu"))
    assert peak.source.startswith("measured fp32 matmul, CPU")
    # Any CPU this runs on does between 1 GFLOP/s and 100 TFLOP/s of fp32 matmul.
    assert 1e9 < peak.flops_per_s < 1e14


def test_measuring_the_peak_leaves_the_random_streams_alone() -> None:
    # A trainer measures before its first step: drawing from the global generator would change the run.
    flops._measured.clear()
    before = torch.get_rng_state()
    device_peak(torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_worker_calibrated_peak_is_used_and_training_never_passes_its_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker hands its calibration down; a peak that read low (here far too low: 1 kFLOP/s) is raised to the
    # rate training reached, so MFU is at most 100 % (it was 125.9 %, series up to 191 %).
    monkeypatch.setenv(flops.PEAK_FLOPS_ENV, "1000.0")
    monkeypatch.setenv(flops.PEAK_SOURCE_ENV, "worker calibration: test")
    peak = device_peak(torch.device("cpu"))
    assert (peak.flops_per_s, peak.kind) == (1000.0, PeakKind.WORKER_CALIBRATION)
    spec = {
        "kind": "pretrain",
        "model": TINY_MODEL,
        "data": SYNTHETIC,
        "train": {"steps": 3, "batch_size": 16, "log_every": 1},
        "resources": {"device": "cpu"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main([str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "mfu" in line]
    assert len(train) == 3
    for line in train:
        assert 0 < line["mfu"] <= 1.0
        assert line["peak_tflops"] * 1e12 >= 1000.0
    assert train[0]["peak_kind"] == PeakKind.TRAINING_REACHED  # raised at once: no CPU is that slow
    # A peak is never lowered again within a run: each line's is at least the one before.
    assert [line["peak_tflops"] for line in train] == sorted(line["peak_tflops"] for line in train)


def test_the_measured_peak_is_the_fastest_of_several_timings() -> None:
    flops._measured.clear()
    peak = device_peak(torch.device("cpu"))
    assert peak.kind == PeakKind.TRAINER_MEASURED
    assert f"fastest of {flops.TIMINGS}" in peak.source
    # `python -m vit.flops` (the worker's calibration) answers with the same kind of measurement, as JSON.
    found = subprocess.run(
        [sys.executable, "-m", "vit.flops"], capture_output=True, text=True, check=True, env=_one_thread_env()
    ).stdout
    calibration = json.loads(found)
    assert calibration["kind"] == PeakKind.TRAINER_MEASURED and 1e9 < calibration["flops_per_s"] < 1e14
    assert calibration["source"].startswith("measured fp32 matmul, CPU, 1 thread,")


def _one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}

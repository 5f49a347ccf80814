"""Do faster settings train the same? One spec run as real jobs under several precision/compile settings; each
loss curve against the first setting's (the reference).

    python bench/loss_curves.py --device cuda fp32:false bf16:true fp8:true        # digits example, 400 steps
    python bench/loss_curves.py --device cpu --steps 100 fp32:false fp32:true

Each setting is PRECISION:COMPILE. Prints, per setting, the largest |loss - reference loss| over the logged steps,
the final train loss and val top-1, and the steady images/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-pretrain.yaml"


def run(spec: dict[str, Any], workdir: Path, name: str) -> list[dict[str, Any]]:
    spec_path, run_dir = workdir / f"{name}.yaml", workdir / name
    spec_path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [sys.executable, "-m", "vit.train", str(spec_path), "--out", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(
            f"{name}: vit.train exited {result.returncode}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("settings", nargs="+", help="PRECISION:COMPILE, e.g. fp32:false bf16:true fp8:true")
    parser.add_argument("--spec", type=Path, default=EXAMPLE)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=0, help="0: the spec's own")
    args = parser.parse_args()
    base = yaml.safe_load(args.spec.read_text())
    base["train"].update(eval_every=0, checkpoint_every=0)
    if args.steps:
        base["train"]["steps"] = args.steps
    base.setdefault("eval", {})["few_shot"] = []
    base.setdefault("resources", {})["device"] = args.device
    reference: dict[int, float] | None = None
    with tempfile.TemporaryDirectory(prefix="loss-curves-") as tmp:
        for setting in args.settings:
            precision, compile_setting = setting.split(":")
            spec = {
                **base,
                "train": {**base["train"], "precision": precision, "compile": compile_setting == "true"},
            }
            lines = run(spec, Path(tmp), setting.replace(":", "-"))
            losses = {line["step"]: line["loss"] for line in lines if "loss" in line}
            rates = [line["images_per_s"] for line in lines if "images_per_s" in line]
            rates = rates[1:] or rates  # the first window holds the warm-up
            top1 = next(line["val_top1"] for line in reversed(lines) if "val_top1" in line)
            reference = reference or losses
            gap = max(abs(losses[step] - reference[step]) for step in reference)
            print(
                f"{setting:<12} max |loss - {args.settings[0]}| {gap:.4f}  final loss {losses[max(losses)]:.4f}  "
                f"val top-1 {top1:.3f}  {sorted(rates)[len(rates) // 2]:,.0f} img/s (median window)",
                flush=True,
            )


if __name__ == "__main__":
    main()

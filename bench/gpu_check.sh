#!/usr/bin/env bash
# Issue 12's GPU figures in one go, on a single Hopper GPU (H100/H200), for a session lent one (device tool):
#
#   run(command="bash bench/gpu_check.sh 1 2", carry=[".whl"], timeout_s=420)   # about 5 min
#   run(command="bash bench/gpu_check.sh 3 4", carry=[".whl"], timeout_s=300)   # at once: the compile cache is warm
#
# (no arguments: every section, about 9 min). Two calls leave time to rerun one inside the 15 minutes of device time.
# .whl/ (gitignored) holds the wheels that machine lacks: torchao (fp8) and pydantic (vit.config) for its Python
# 3.12; refill it with the commands in bench/NOTES.md. Everything is written to $OUT (default ./gpu-check) as it
# comes: gpu_check.log, and one JSON per job_throughput run. The sections run in the order of what the issue must
# show, each under its own time limit, so a slow one costs itself and not the rest:
#   1. B/16 @ 224 px, batch 256, bf16, compiled: a real job against the model-only step (target >= 4,000 img/s,
#      job / model-only >= 0.95), MFU against the datasheet peak and the measured matmul rate
#   2. the same with fp8 Linear layers (target >= 5,000 img/s)
#   3. torch.profiler of the compiled bf16 and fp8 steps: the top kernels and the GPU's idle time
#   4. loss curves of the digits example: fp32 eager (reference), bf16 compiled, fp8 compiled
#   5. issue 20: the B/16 bf16 compiled job with the regularized recipe (drop-path 0.1, mixup 0.8 + CutMix 1.0,
#      RandAugment m9, label smoothing, EMA) against the plain job, run back to back on the same machine:
#      target regularized / plain >= 0.9 (`bash bench/gpu_check.sh 5`, about 5 min, not yet run on a GPU)
#   6. (issue 21, separate: `bash bench/gpu_check.sh 6`, about 1 min) JPEG decoding of shard-sized photos with
#      nvJPEG, batched (torchvision.io.decode_jpeg on the device), against PIL: img/s and pixel agreement
#   7. (issue 21, separate: `bash bench/gpu_check.sh 7`, about 2 min) the training data path with data.decode:
#      device (workers read bytes, nvJPEG + crops on the GPU) against data.decode: loader (CPU workers), img/s
#   Both: `run(command="bash bench/gpu_check.sh 6 7", carry=[".whl"], timeout_s=300)`; vit.config now also
#   imports braceexpand (pure Python): add its wheel to .whl/ (`pip download braceexpand --no-deps -d .whl`).
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-}
nvidia-smi -L
python3 - <<'EOF'
import torch, torchao, pydantic
from vit.flops import measured_matmul_flops
device = torch.device("cuda")
print(f"torch {torch.__version__}, torchao {torchao.__version__}, pydantic {pydantic.__version__}, "
      f"{torch.cuda.get_device_name(device)}, capability {torch.cuda.get_device_capability(device)}")
print(f"measured bf16 matmul (8192^3): {measured_matmul_flops(device, torch.bfloat16) / 1e12:.0f} TFLOP/s")
EOF

SECTIONS=${*:-1 2 3 4 5}
wants() { [[ " $SECTIONS " == *" $1 "* ]]; }
B16=(--device cuda --variant B/16 --image-size 224 --batch-size 256 --classes 1000 --synthetic-size 4096)
JOB=(--steps 100 --warmup-steps 40 --log-every 10 --model-only-once)

if wants 1; then
  echo "== 1. B/16 bf16 compiled: job vs model-only"
  timeout 200 python3 bench/job_throughput.py "${B16[@]}" "${JOB[@]}" --precision bf16 --compile true \
    --json "$OUT/b16_bf16_compiled.json"
fi
if wants 2; then
  echo "== 2. B/16 fp8 compiled: job vs model-only"
  timeout 200 python3 bench/job_throughput.py "${B16[@]}" "${JOB[@]}" --precision fp8 --compile true \
    --json "$OUT/b16_fp8_compiled.json"
fi
if wants 3; then
  echo "== 3. profiles (compiled model-only steps)"
  for precision in bf16 fp8; do
    timeout 80 python3 bench/profile_step.py --device cuda --variant B/16 --image-size 224 --batch-size 256 \
      --precision "$precision" --compile --top 12
  done
fi
if wants 4; then
  echo "== 4. digits example: loss curves against fp32 eager"
  timeout 180 python3 bench/loss_curves.py --device cuda fp32:false bf16:true fp8:true
fi
if wants 5; then
  echo "== 5. B/16 bf16 compiled: regularized recipe vs plain"
  for recipe in plain regularized; do
    flag=$([ "$recipe" = regularized ] && echo --regularized)
    timeout 200 python3 bench/job_throughput.py "${B16[@]}" "${JOB[@]}" --precision bf16 --compile true $flag \
      --bench-rounds 1 --bench-steps 10 --bench-warmup 5 --json "$OUT/b16_bf16_$recipe.json"
  done
  python3 - "$OUT" <<'EOF'
import json, sys
plain, reg = (json.load(open(f"{sys.argv[1]}/b16_bf16_{r}.json"))["job_images_per_s"] for r in ("plain", "regularized"))
verdict = "met" if reg >= 0.9 * plain else "MISSED"
print(f"regularized {reg:,.0f} img/s / plain {plain:,.0f} img/s = {reg / plain:.3f} (target >= 0.9: {verdict})")
EOF
fi

# ---------------------------------------------------------------------------------------------------------------
# Issue 21 (data at scale), not issue 12's figures: not yet run on a GPU.
if wants 6; then
  echo "== 6. JPEG decoding: PIL vs torchvision CPU vs nvJPEG batched (500x375, quality 90)"
  for batch in 64 256; do
    timeout 120 python3 bench/jpeg_decode.py --device cuda --images 1024 --batch-size "$batch"
  done
fi
if wants 7; then
  echo "== 7. training batches: data.decode device (nvJPEG, crops on the GPU) vs loader (CPU workers)"
  timeout 200 python3 bench/gpu_decode.py --images 2048 --batch-size 256
fi
echo "== done"

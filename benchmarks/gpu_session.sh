#!/bin/bash
# What to run on a briefly lent GPU machine (an H200 so far), in one call, in priority order;
# each phase has a deadline so a slow one cannot starve the rest, and what finished comes back
# under $OUT (run directories without their images, perf JSON, the log).
#   bash benchmarks/gpu_wheels.sh      # here, once: the wheels the GPU image lacks, into .whl/
#   device run: bash benchmarks/gpu_session.sh   (carry: .whl; timeout_s 600)
# Locally, with a CUDA torch: OUT=/tmp/out bash benchmarks/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
START=$(date +%s) BUDGET=${BUDGET:-560}
left() { echo $((START + BUDGET - $(date +%s))); }
phase() {  # phase NAME MAX_SECONDS COMMAND...: run with the smaller of MAX_SECONDS and what is left
  local name=$1 limit=$2; shift 2
  local secs; secs=$(left); [ "$secs" -gt "$limit" ] && secs=$limit
  if [ "$secs" -lt 15 ]; then echo "== $name: skipped, ${secs}s left"; return; fi
  echo "== $name (up to ${secs}s) at $(date +%T)"
  timeout "$secs" "$@"; echo "== $name: exit $? at $(date +%T)"
  tar czf "$OUT/runs.tgz" --exclude=images --exclude=fid -C /tmp runs 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

# The transformer families at their released sizes (random weights, 1024 px, bf16): the adapter
# against the family's own pipeline, distribution guidance against none.
for family in sd3 flux; do
  phase "speed-$family" 150 python3 benchmarks/transformer_speed.py --size full --families "$family" --device cuda \
    --dtype bfloat16 --out "$OUT/transformer_speed_${family}_cuda.json"
done
# Semantic guidance on the text model's efficacy bar with its scale calibrated per setting (the
# calibration's trial images are hours on a CPU; the fixed-scale bar ran there).
mkdir -p /tmp/runs
phase training-free-t2i-auto 240 python3 -m audit.cli run benchmarks/training_free_efficacy_t2i_auto.yaml \
  -o /tmp/runs/training-free-t2i-auto --device cuda --threads 16
# Continue the archived tables (finished cells are skipped by id; calibration records reused).
cp -r benchmarks/results/efficacy_eta1_run /tmp/runs/efficacy
phase efficacy 330 python3 -m audit.cli run benchmarks/efficacy.yaml -o /tmp/runs/efficacy --device cuda --threads 16
phase batch-ablation 150 python3 benchmarks/batch_ablation.py --suite benchmarks/efficacy.yaml \
  --out /tmp/runs/batch-ablation --device cuda --json "$OUT/batch_ablation_cuda.json"
phase sweep 200 python3 -m audit.cli run benchmarks/efficacy_sweep.yaml -o /tmp/runs/efficacy-sweep --device cuda --threads 16
# Measured on an H200 (benchmarks/results/perf_*_cuda.json); the SD-1.5-sized model alone
# takes ~2 min (most of it building the random 860M-parameter UNet on the CPU).
if [ -n "${PERF:-}" ]; then
  phase perf-guidance 60 python3 benchmarks/perf.py --device cuda --threads 16 --skip metrics scaling sd15 \
    --out "$OUT/perf_guidance_cuda.json"
  phase sd15-fp32 200 python3 benchmarks/perf.py --device cuda --threads 16 --skip guidance metrics scaling \
    --out "$OUT/perf_sd15_cuda.json"
fi
echo "== done at $(date +%T), $(left)s of the budget left"

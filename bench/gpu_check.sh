#!/usr/bin/env bash
# The device check, one call of at most ~7 minutes (run tool, timeout_s=540):
#   bash bench/gpu_check.sh            (files go to $OUT, or ./gpu-check/)
# Needs torch + torchvision + PyYAML + scikit-learn (on the H200 image), not mlflow, not pytest,
# no network. Every section has its own timeout, cut to what is left of DEADLINE_S, so a slow
# one loses only itself; the limits, with `timeout -k 5`'s 5 s each, add up to DEADLINE_S at
# most (tests/test_bench.py checks).
# At most 8 files come back; $OUT holds exactly these:
#   machine.txt      GPU, driver, torch/torchvision/CUDA/cuDNN versions
#   summary.txt      each section: exit status and seconds (124 = timed out)
#   selfcheck.txt    bench/gpu_selfcheck.py: CHECK lines (variants, resume, oom) + tracebacks
#   selfcheck.json   per-step losses of graph on/off x bf16/fp32, resume metrics, OOM reason
#   throughput.txt   every bench/throughput.py report (arms, images/s, TFLOP/s, memory, packing;
#                    ImageNet's T, T-gpu_decode, B) and bench/input_pipeline.py's (fb-cpu /
#                    torchvision per core, batched / per-image on the GPU)
#   throughput.jsonl one line per arm: images/s, ms/step, TFLOP/s, peak MiB, FLOPs, precision
#   calibration.yaml ready-to-commit entries for rkrepro/calibration.yaml (arm T)
#   pytest.txt       the CUDA tests of tests/ (if pytest imports there)
set -u
out="${OUT:-gpu-check}"
mkdir -p "$out"
DEADLINE_S="${DEADLINE_S:-430}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: >"$out/summary.txt"

section() {  # section NAME TIMEOUT LOG COMMAND...
  local name=$1 limit=$2 log=$3 left=$((DEADLINE_S - SECONDS)) start=$SECONDS
  shift 3
  if ((left < 15)); then
    echo "$name: skipped, deadline reached" | tee -a "$out/summary.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s)" | tee -a "$out/$log"
  timeout -k 5 "$limit" "$@" >>"$out/$log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$out/summary.txt" "$out/$log"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

TP="python3 bench/throughput.py --device cuda --json $out/throughput.jsonl"
section selfcheck 75 selfcheck.txt python3 bench/gpu_selfcheck.py --out "$out"
section bc100 50 throughput.txt $TP --table table1 --row densenet-bc-k12 \
  --arms T,T-bf16,A,B --steps 100 --rounds 3 --seconds 38
for depth in 20 110; do
  section "resnet-$depth" 30 throughput.txt $TP --table table4 --row "resnet-$depth" \
    --arms T,T-bf16,B --steps 100 --rounds 3 --seconds 20
done
section pack-bc100 40 throughput.txt $TP --table table1 --row densenet-bc-k12 --arms T \
  --steps 100 --rounds 2 --seconds 10 --jobs-per-gpu 4,8 --no-loss-check
section large-bc190-k40 45 throughput.txt $TP --spec densenet-bc:190:40 --arms T,T-bf16 \
  --steps 10 --rounds 2 --warmup-steps 3 --seconds 30 --no-loss-check
section imagenet-121 60 throughput.txt $TP --table table3 --row densenet-121 \
  --arms T,T-gpu_decode,B --steps 6 --rounds 2 --warmup-steps 3 --seconds 45 --b-workers 14 \
  --synthetic-images 1536
section input-pipeline 25 throughput.txt python3 bench/input_pipeline.py --device cuda \
  --rounds 5 --seconds 15
python3 -c "import json, sys; from rkrepro import calibration; print(calibration.snippet([json.loads(l) for l in open(sys.argv[1])]), end='')" \
  "$out/throughput.jsonl" >"$out/calibration.yaml" 2>>"$out/summary.txt"
if python3 -c "import pytest" 2>/dev/null; then
  section pytest-cuda 25 pytest.txt python3 -m pytest -q -x -p no:cacheprovider \
    tests/training tests/data/test_cifar.py tests/data/test_gpu_augment.py \
    -k "cuda or graph or bf16"
else
  echo "pytest-cuda: skipped, no pytest on this machine" | tee -a "$out/summary.txt" "$out/pytest.txt"
fi
cat "$out/summary.txt"

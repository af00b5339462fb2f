#!/usr/bin/env bash
# The GPU check of issue 6, prepared to run in one device call of at most ~8 minutes:
#   bash bench/gpu_check.sh            (figures go to $OUT, or ./gpu-check/)
# DenseNet-BC-100 k=12 (arms T, A, B, plus T packed 4 to the GPU) and ResNet-56 (arms T, B;
# torchvision has no CIFAR ResNet). Needs torch and torchvision, not mlflow and no network.
set -u
out="${OUT:-gpu-check}"
mkdir -p "$out"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# Each benchmark stops starting rounds after --seconds; the timeouts are a backstop only.
timeout 270 python3 bench/throughput.py --row densenet-bc-k12 --device cuda \
  --seconds 150 --jobs-per-gpu 4 2>&1 | tee "$out/densenet-bc-k12.txt"
echo "exit ${PIPESTATUS[0]}" >>"$out/densenet-bc-k12.txt"
timeout 180 python3 bench/throughput.py --table table4 --row resnet-56 --device cuda \
  --seconds 90 2>&1 | tee "$out/resnet-56.txt"
echo "exit ${PIPESTATUS[0]}" >>"$out/resnet-56.txt"

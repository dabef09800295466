#!/bin/bash
# Multi-GPU (and multi-node) training with torchrun: it starts one process per GPU and Lightning's
# TorchElasticEnvironment reads the ranks and world size from torchrun's variables (no launcher of our own).
# One machine, all its GPUs:
#   bash cluster/torchrun.sh
# Two machines: run on each, with the first one's address as the rendezvous endpoint:
#   NNODES=2 RDZV_ENDPOINT=node0.example.org:29500 CONFIGS="configs/data/sop.yaml configs/resnet50_ms.yaml" bash cluster/torchrun.sh
# Run from the repository root (configs/, data/ and runs/ are relative to it); extra arguments go to the CLI.
set -euo pipefail
# CONFIGS: the stacked configs, dataset first (word-split: paths without spaces)
CONFIGS=${CONFIGS:-configs/data/cub.yaml configs/resnet50_ms.yaml}
config_args=()
for config in $CONFIGS configs/ddp.yaml; do config_args+=(--config "$config"); done
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(python -c "import torch; print(torch.cuda.device_count())")}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500}
RDZV_ID=${RDZV_ID:-lightning-dml}

exec torchrun \
  --nnodes "$NNODES" \
  --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$RDZV_ENDPOINT" \
  --rdzv-id "$RDZV_ID" \
  --no-python \
  lightning-dml fit \
  "${config_args[@]}" \
  --trainer.num_nodes "$NNODES" \
  --trainer.devices "$GPUS_PER_NODE" \
  "$@"

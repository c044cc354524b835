#!/usr/bin/env bash
# Launch nano training on this node: ./run_train.sh --config FILE [--section.key value ...]
#
# Environment (all optional):
#   NGPU         processes on this node (default: visible CUDA GPUs, else 1)
#   NNODES       number of nodes (default 1); NODE_RANK this node's index (default 0)
#   MASTER_ADDR  / MASTER_PORT   rendezvous host and port of node 0 (default 127.0.0.1:29500)
#   RDZV_ENDPOINT host:port for elastic c10d rendezvous instead of MASTER_ADDR/PORT (set the same on every node)
set -euo pipefail

config=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --config) config="${args[i + 1]:-}" ;;
    --config=*) config="${args[i]#--config=}" ;;
    -h|--help) exec python -m nano.train --help ;;
  esac
done
if [[ -z "$config" ]]; then
  echo "error: no config given; usage: ./run_train.sh --config train_configs/debug_model.toml [--section.key value ...]" >&2
  exit 2
fi
if [[ ! -f "$config" ]]; then
  echo "error: config file not found: $config" >&2
  exit 2
fi

if [[ -z "${NGPU:-}" ]]; then
  NGPU=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
NNODES=${NNODES:-1}

if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
  rendezvous=(--rdzv_backend=c10d "--rdzv_endpoint=${RDZV_ENDPOINT}" "--rdzv_id=${RDZV_ID:-nano}")
else
  rendezvous=("--node_rank=${NODE_RANK:-0}" "--master_addr=${MASTER_ADDR:-127.0.0.1}" "--master_port=${MASTER_PORT:-29500}")
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NGPU > 0 ? $(nproc) / NGPU : 1 ))}
exec torchrun --nproc_per_node="$NGPU" --nnodes="$NNODES" "${rendezvous[@]}" -m nano.train "$@"

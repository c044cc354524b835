#!/usr/bin/env bash
# Launch nano training on this node: ./run_train.sh --config FILE [--section.key value ...]
#
# Environment (all optional):
#   NGPU           processes on this node (default: visible CUDA GPUs, else 1)
#   NNODES         nodes in the job (default 1); nodes meet at a c10d rendezvous on RDZV_ENDPOINT
#   RDZV_ENDPOINT  host:port of that rendezvous, the same on every node (default MASTER_ADDR:MASTER_PORT)
#   RDZV_ID        the job's id, the same on every node (default nano)
#   MASTER_ADDR / MASTER_PORT  one node: a fixed rendezvous address (default: a free port, --standalone)
#   MAX_RESTARTS   restarts of all workers after a failure, each resuming from the last checkpoint (default 0)
#   SHUTDOWN_TIMEOUT  seconds workers get after SIGTERM/SIGUSR1 to finish the step and save (default 300)
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

NGPU=${NGPU:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
NNODES=${NNODES:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NGPU > 0 ? $(nproc) / NGPU : 1 ))}

if [[ "$NNODES" == 1 && "$NGPU" == 1 && -z "${RDZV_ENDPOINT:-}" && "${MAX_RESTARTS:-0}" == 0 ]]; then
  exec python -m nano.train "$@"  # one process needs no launcher: nano's own messages and exit code, nothing else
fi
if [[ "$NNODES" != 1 || -n "${RDZV_ENDPOINT:-}" ]]; then
  endpoint=${RDZV_ENDPOINT:-${MASTER_ADDR:?set RDZV_ENDPOINT (host:port) or MASTER_ADDR on every node}:${MASTER_PORT:-29500}}
  rendezvous=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="$endpoint" --rdzv_id="${RDZV_ID:-nano}")
elif [[ -n "${MASTER_PORT:-}" ]]; then
  rendezvous=(--nnodes=1 --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$MASTER_PORT")
else
  rendezvous=(--standalone)  # a free port: runs started side by side on one machine do not collide
fi
exec torchrun --nproc_per_node="$NGPU" "${rendezvous[@]}" --max_restarts="${MAX_RESTARTS:-0}" \
  --signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown_timeout="${SHUTDOWN_TIMEOUT:-300}" \
  -m nano.train "$@"

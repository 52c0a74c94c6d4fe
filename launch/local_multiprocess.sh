#!/usr/bin/env bash
# N local processes (CPU, gloo collectives) as one JAX job -- how multi-host training is tested.
#   launch/local_multiprocess.sh 2 --config configs/tiny.py --workdir runs/mp --config.data.train=DIR
# Each process gets DEVICES_PER_PROCESS simulated CPU devices (default 4); process 0 logs.
set -euo pipefail
N=${1:?usage: launch/local_multiprocess.sh NUM_PROCESSES clapcomp-train-flags...}; shift
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}" JAX_PLATFORMS=cpu
pids=()
for ((i = 0; i < N; i++)); do
  clapcomp train "$@" --coordinator="127.0.0.1:${PORT}" --num_processes="$N" --process_id="$i" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT   # forwarded: every process saves and exits 0
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

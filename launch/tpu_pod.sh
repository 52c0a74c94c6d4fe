#!/usr/bin/env bash
# Cloud TPU VM pod: create, install on every worker, run the same command on all of them.
#   launch/tpu_pod.sh create                       # once
#   launch/tpu_pod.sh setup                        # copies this repo and installs it on every worker
#   launch/tpu_pod.sh train configs/clap_htsat_roberta.py gs://bucket/runs/clap --config.data.train=/mnt/data/train
#   launch/tpu_pod.sh delete
# jax.distributed.initialize() detects the pod by itself; the workdir must be shared (a GCS bucket
# or a mounted filesystem). Spot/preemptible VMs get SIGTERM: the run saves and exits 0; run
# `train` again to resume.
set -euo pipefail
NAME=${TPU_NAME:-clapcomp}; ZONE=${ZONE:-us-central2-b}; TYPE=${ACCELERATOR_TYPE:-v4-32}
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
ssh_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }
case "${1:?create | setup | train CONFIG WORKDIR [flags] | delete}" in
  create) gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$VERSION" ${SPOT:+--spot} ;;
  setup)
    gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all --recurse "$(dirname "$0")/.." "$NAME":clapcomp
    ssh_all 'cd clapcomp && python3 -m venv .venv && .venv/bin/pip install -q -e . "jax[tpu]"' ;;
  train)
    shift; CONFIG=$1; WORKDIR=$2; shift 2
    ssh_all "cd clapcomp && .venv/bin/clapcomp train --config $CONFIG --workdir $WORKDIR $*" ;;
  delete) gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet ;;
esac

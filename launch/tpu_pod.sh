#!/usr/bin/env bash
# Cloud TPU VM pod: create it, install clapcomp on every worker, run the same command on all of them.
#   launch/tpu_pod.sh [--dry-run] SUBCOMMAND ...     --dry-run: print the commands, run none of them
#   create                        the TPU VM (SPOT=1: a spot VM)
#   setup                         the committed tree (git archive HEAD) to ~/clapcomp on every worker,
#                                 installed with the train and tpu extras in ~/clapcomp/.venv
#   mount BUCKET                  gcsfuse-mount gs://BUCKET at /mnt/BUCKET on every worker
#   train CONFIG WORKDIR [FLAGS]  `clapcomp train` on every worker; the same command again resumes
#   export MODEL OUT [FLAGS]      `clapcomp export --model MODEL --out OUT` on worker 0
#   delete
# jax.distributed.initialize() detects the pod by itself. The workdir and the export are gs:// paths that
# every worker shares (clapcomp writes them through etils.epath; Orbax writes the checkpoints); the training
# records are read from the gcsfuse mount (docs/tpu-pods.md). On SIGTERM (maintenance, spot preemption) the
# run saves and exits 0; `train` again resumes from the bucket.
set -euo pipefail
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
NAME=${TPU_NAME:-clapcomp}; ZONE=${ZONE:-us-central2-b}; TYPE=${ACCELERATOR_TYPE:-v4-32}
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
# clapcomp needs Python >= 3.11; the Ubuntu 22.04 TPU images ship 3.10, so setup installs python3.11 by apt
PYTHON=${PYTHON:-python3.11}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${TMPDIR:-/tmp}/clapcomp-src.tar.gz

run() {  # a command, or with --dry-run its shell-quoted words on one line
  if ((DRY_RUN)); then printf '%s\n' "${*@Q}"; else "$@"; fi
}
on() {  # on WORKER COMMAND: COMMAND in a login shell of WORKER (all | 0 | 1 ...)
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker="$1" --command "$2"
}
usage="usage: launch/tpu_pod.sh [--dry-run] create | setup | mount BUCKET | train CONFIG WORKDIR [FLAGS] |"
usage+=" export MODEL OUT [FLAGS] | delete"
cmd=${1:-}
shift || true
case "$cmd" in
  create) run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$VERSION" ${SPOT:+--spot} ;;
  setup)
    # the committed tree only: no local .venv, build outputs or workdirs travel to the workers
    run git -C "$ROOT" archive --format=tar.gz -o "$SRC" HEAD
    run gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all "$SRC" "$NAME":clapcomp-src.tar.gz
    # CPU-side packages at the versions CI tested (constraints.txt); then the tpu extra without constraints,
    # as the Makefile installs the gpu extra: it keeps the tested jax if it fits and adds jax's own libtpu
    on all "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON-venv \
&& mkdir -p clapcomp && tar -xzf clapcomp-src.tar.gz -C clapcomp && cd clapcomp && $PYTHON -m venv .venv \
&& .venv/bin/pip install -q -c constraints.txt -e '.[train,gcs]' && .venv/bin/pip install -q -e '.[train,tpu]'" ;;
  mount)
    bucket=${1:?usage: launch/tpu_pod.sh mount BUCKET (the name, without gs://)}
    bucket=${bucket#gs://}
    [[ $bucket =~ ^[a-z0-9][a-z0-9._-]*$ ]] || { echo "tpu_pod.sh: '$bucket' is not a bucket name" >&2; exit 2; }
    mnt=/mnt/$bucket
    # gcsfuse from Google's apt repository for the workers' Ubuntu release; --implicit-dirs: folders made by
    # other writers are seen; --rename-dir-limit: checkpoint folders are renamed into place
    # shellcheck disable=SC2016  # $(lsb_release -cs) expands on the worker
    gcsfuse_apt='curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse'
    on all "{ command -v gcsfuse >/dev/null || { $gcsfuse_apt; }; } && sudo mkdir -p $mnt && sudo chown \"\$USER\" $mnt \
&& { mountpoint -q $mnt || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $bucket $mnt; }" ;;
  train)
    (($# >= 2)) || { echo "usage: launch/tpu_pod.sh train CONFIG WORKDIR [FLAGS]" >&2; exit 2; }
    flags=("${@:3}")
    on all "cd clapcomp && .venv/bin/clapcomp train --config ${1@Q} --workdir ${2@Q} ${flags[*]@Q}" ;;
  export)
    (($# >= 2)) || { echo "usage: launch/tpu_pod.sh export MODEL OUT [FLAGS]" >&2; exit 2; }
    flags=("${@:3}")
    on 0 "cd clapcomp && .venv/bin/clapcomp export --model ${1@Q} --out ${2@Q} ${flags[*]@Q}" ;;
  delete) run gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Installs the Debian 12 packages ptrain builds, tests and runs with. Idempotent: only what is
# missing is installed. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ pkg-config
  libboost1.81-dev          # Asio 1.28 (coroutines, as_tuple, awaitable operators) for the TCP roles
  libhdf5-dev hdf5-tools    # checkpoints; h5dump/h5ls to look at them
  libyaml-cpp-dev           # config files
  libopenblas-openmp-dev    # CPU sgemm; the OpenMP build cooperates with our OpenMP loops
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libssl-dev
  doctest-dev
  libopenmpi-dev openmpi-bin  # cluster.launch: mpi and the MPI data plane (optional at build time)
  slurm-wlm munge           # the local SLURM cluster of the `slurm` tests (scripts/slurm/local-cluster.sh)
  zlib1g-dev libzstd-dev    # gzip and zstd corpus inputs (ptrain prepare)
  clang-14 libclang-rt-14-dev  # libFuzzer for the frame-decoder fuzz test (tests/fuzz)
  fortunes                  # the quickstart corpus (/usr/share/games/fortunes)
  python3-torch python3-h5py python3-numpy  # reference numbers and benchmarks (/usr/bin/python3)
  chromium prometheus       # the status page test (headless) and promtool check metrics
  sentencepiece time        # scripts/bench_prepare.sh: spm_train/spm_encode beside prepare; peak RSS
)

missing=()
# Node and npm run the reference tokenizer clients the tests install at test time (Hugging Face's
# tokenizers, GPT-2's encoder). A Node that is already there (some images ship one that bundles npm
# and conflicts with Debian's npm package) is used as it is.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"

#!/usr/bin/env bash
# Installs what cohortd needs to build, run and test on Debian 12 (as root).
# Only packages that are missing are installed.
set -euo pipefail
PKGS=(gcc make cmake pkg-config
      librdkafka-dev libavro-dev libev-dev libcmocka-dev
      libopenblas-dev libprotobuf-c-dev protobuf-c-compiler libonnx-dev
      libsystemd-dev libssl-dev libjansson-dev libcsv-dev zlib1g-dev libcurl4-openssl-dev systemd curl kcat clang-14 libclang-rt-14-dev
      python3 python3-confluent-kafka python3-avro python3-sklearn python3-onnx
      python3-numpy python3-matplotlib python3-xgboost)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PKGS[@]} packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]}; run as root (or: sudo $0)" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

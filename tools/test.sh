#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install dependencies, build with
# -Werror under AddressSanitizer + UndefinedBehaviorSanitizer, and run every
# unit and integration test and the short benchmark (ctest); then build the
# libFuzzer targets with clang and run each for CH_FUZZ_SECONDS (60) from its seed
# corpus (ctest -L fuzz; FUZZ=0 skips them). The datasets are read from ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
BUILD=${BUILD_DIR:-build-asan}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DCH_WERROR=ON -DCH_SANITIZE=ON >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
(cd "$BUILD" && ctest --output-on-failure -L 'unit|integration|bench' "$@")
if [ "${FUZZ:-1}" != 0 ]; then
    FUZZ_BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
    cmake -S . -B "$FUZZ_BUILD" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_BUILD_TYPE=Debug -DCH_FUZZ=ON \
        -DCH_FUZZ_SECONDS="${CH_FUZZ_SECONDS:-60}" >/dev/null
    cmake --build "$FUZZ_BUILD" --target fuzzers -j"$(nproc)"
    (cd "$FUZZ_BUILD" && ctest --output-on-failure -L fuzz)
fi

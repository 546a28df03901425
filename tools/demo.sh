#!/usr/bin/env bash
# One command for a fresh Debian 12 machine: install dependencies, build, and run
# the demo on the embedded broker: cohort-broker, the event generator (synthetic
# users with planted behaviour groups, 1 message in 5000 malformed) and cohortd,
# which scores them with the example model and 16 online segments and prints live
# progress (events/s in and out, risk updates and alerts, users, segments, bad input)
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

RATE=${RATE:-2000}
pids=()
cleanup() {
    # generator first, then cohortd (it flushes and commits), the broker last
    trap - INT TERM EXIT
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    echo "demo: stopped"
}
trap cleanup INT TERM EXIT

# Each child runs in its own session (setsid), so that Ctrl-C reaches only this script
# and cleanup() stops them in order; otherwise the terminal's SIGINT hits the broker
# at the same time as cohortd, which then cannot flush and commit.
coproc BROKER { exec setsid build/stream/cohort-broker --partitions 4; }
pids+=("$BROKER_PID")
read -r BOOTSTRAP <&"${BROKER[0]}"
echo "demo: embedded broker at $BOOTSTRAP (topics events, profiles, risk, cohortd-dlq)"
echo "demo: watch outputs with: kcat -b $BOOTSTRAP -t profiles -C -o end   (apt-get install kcat)"

setsid build/daemon/cohortd --config conf/cohortd.conf --set "kafka.bootstrap.servers=$BOOTSTRAP" \
    --set log.stats_interval=1s &
pids+=("$!")
setsid build/tools/cohort-gen --brokers "$BOOTSTRAP" --users 5000 --rate "$RATE" --bad-every 5000 \
    --quiet &
pids+=("$!")
echo "demo: cohort-gen sends $RATE events/s; cohortd reports every second. Ctrl-C stops."
echo "demo: metrics: curl -s 127.0.0.1:9180/metrics | grep -v '^#'; a user: curl -s 127.0.0.1:9180/users/u42"
wait "${pids[1]}" || true

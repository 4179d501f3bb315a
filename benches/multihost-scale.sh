#!/usr/bin/env bash
# Scale figures across hosts (BENCHMARKS.md §1.3): tests/multihost_scale.rs in release, as root.
# Each shape is deployed on network namespaces (2 agents, 1–3 Dopplers, an RLP or 1–2 log-cache
# nodes, mutual TLS on every hop) and driven by target/release/loadgen. Knobs (environment):
# SCALE_SHAPES, SCALE_DURATION, SCALE_FIXED_RATE, SCALE_LOW, SCALE_HIGH (see the test's docs).
#
#   sudo benches/multihost-scale.sh
#   SCALE_SHAPES=2a-1d-rlp,2a-3d-rlp SCALE_DURATION=6 benches/multihost-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "benches/multihost-scale.sh: needs root (ip netns, veth, bridge)" >&2
  exit 1
fi
cargo build --release -p benches --bin loadgen
# scripts/multihost builds the test binary and runs it with a trap that removes what a killed run
# leaves behind; the release profile and the ignored benchmark are passed through.
MULTIHOST_TEST=multihost_scale scripts/multihost --release -- --ignored --nocapture

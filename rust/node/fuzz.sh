#!/bin/sh
# The long fuzzing run of the Rust node's decoders (CI runs 2,000 cases per property):
#   rust/node/fuzz.sh [CASES]        default 200000 cases per property
set -eu
cd "$(dirname "$0")/../.."
PROPTEST_CASES="${1:-200000}" exec cargo test --release -p iroh-pair-node fuzz:: -- --test-threads=2

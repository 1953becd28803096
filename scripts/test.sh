#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (privileged suites included: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
swift build --build-tests
swift test --skip-build

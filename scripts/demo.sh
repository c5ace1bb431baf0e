#!/usr/bin/env bash
# README command 1: install, build a GeoNames snapshot (235k real places), serve it over gRPC and run
# example queries in English and Chinese. No external server needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/quarry demo "$@"

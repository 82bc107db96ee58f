#!/usr/bin/env bash
# The test suite, from a fresh clone: install the package with its test tools, build (or
# reuse) the pinned livekit-server, run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
LIVEKIT_SERVER_BIN="$(bash scripts/install-livekit-server.sh | tail -n 1)"
export LIVEKIT_SERVER_BIN
exec python3 -m pytest "$@"

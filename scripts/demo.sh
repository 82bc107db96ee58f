#!/usr/bin/env bash
# The demo, from a fresh clone: install the package, build (or reuse) the pinned
# livekit-server, run `dualchannel demo`. Extra arguments go to the demo (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
LIVEKIT_SERVER_BIN="$(bash scripts/install-livekit-server.sh | tail -n 1)"
export LIVEKIT_SERVER_BIN
exec dualchannel demo "$@"

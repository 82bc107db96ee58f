#!/usr/bin/env bash
# Build the pinned livekit-server from its Go module into a cache outside the repository,
# and reuse it when it is already there. Prints the binary's path on its last line.
#
#   LIVEKIT_SERVER_VERSION  release to build (default: v1.13.5, the version the tests pin)
#   DUALCHANNEL_CACHE       cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/dualchannel)
set -euo pipefail

version="${LIVEKIT_SERVER_VERSION:-v1.13.5}"
cache="${DUALCHANNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualchannel}"
bindir="$cache/livekit-server-$version/bin"
binary="$bindir/server"

if [ -x "$binary" ]; then
    echo "livekit-server $version: reusing $binary" >&2
    echo "$binary"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' is not on PATH; install Go (1.22 or newer) to build livekit-server $version" >&2
    exit 1
fi

echo "livekit-server $version: building with go install (a few minutes the first time)..." >&2
mkdir -p "$bindir"
tmp="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install "github.com/livekit/livekit-server/cmd/server@$version"
mv "$tmp/server" "$binary"
echo "livekit-server $version: built $binary" >&2
echo "$binary"

#!/usr/bin/env bash
# Build the pinned Centrifugo from its Go module into a cache outside the repository, and
# reuse it when it is already there. Prints the binary's path on its last line. The
# benchmarks (`dualchannel bench centrifugo`) run it side by side with the relay.
#
#   CENTRIFUGO_VERSION  release to build (default: v6.9.1, the version the benchmarks pin)
#   DUALCHANNEL_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/dualchannel)
set -euo pipefail

version="${CENTRIFUGO_VERSION:-v6.9.1}"
cache="${DUALCHANNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualchannel}"
bindir="$cache/centrifugo-$version/bin"
binary="$bindir/centrifugo"

if [ -x "$binary" ]; then
    echo "centrifugo $version: reusing $binary" >&2
    echo "$binary"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' is not on PATH; install Go (1.24 or newer) to build centrifugo $version" >&2
    exit 1
fi

echo "centrifugo $version: building with go install (a few minutes the first time)..." >&2
mkdir -p "$bindir"
tmp="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install "github.com/centrifugal/centrifugo/v6@$version"
mv "$tmp/centrifugo" "$binary"
echo "centrifugo $version: built $binary" >&2
echo "$binary"

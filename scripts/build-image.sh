#!/usr/bin/env bash
# Builds the agent image (deploy/Dockerfile) with docker or podman, tagged with the
# package's version: wgcable:<version>, or the tag given. It never pushes: push it yourself
# to a registry your nodes pull from, and give that name to `wgcable join --image`.
#
#   scripts/build-image.sh                      # wgcable:0.1.0
#   scripts/build-image.sh registry.example/wgcable:0.1.0
#   ENGINE=podman scripts/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
tag=${1:-wgcable:${version}}
engine=${ENGINE:-}
if [ -z "$engine" ]; then
    for candidate in docker podman; do
        if command -v "$candidate" >/dev/null; then engine=$candidate; break; fi
    done
fi
if [ -z "$engine" ] || ! command -v "$engine" >/dev/null; then
    echo "build-image.sh: no container engine (docker or podman; ENGINE=...) found" >&2
    exit 1
fi
"$engine" build -f deploy/Dockerfile -t "$tag" .
echo "build-image.sh: built $tag; push it with: $engine push $tag"

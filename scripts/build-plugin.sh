#!/usr/bin/env bash
# Build mini-ipam as a managed (v2) Docker plugin and create it in an engine:
#
#   scripts/build-plugin.sh [NAME]          # NAME defaults to "mini"; use it as --ipam-driver NAME:latest
#
# Environment:
#   BASE     base image of the plugin's root filesystem, with Python 3.11 (default: python:3.11-slim;
#            without a registry, a local image such as one made by `debootstrap --include=python3,python3-venv`)
#   DOCKER   the docker command, e.g. "docker -H unix:///tmp/engine.sock" (default: docker)
#   ENABLE   1 to enable the plugin once created (default: 1)
#
# The wheels (mini-ipam and its dependencies) are built here first, so the image build needs no index.
set -euo pipefail

name="${1:-mini}"
base="${BASE:-python:3.11-slim}"
docker=(${DOCKER:-docker})
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
image="mini-ipam-plugin-rootfs:$$"
container=""

cleanup() {
  [ -n "$container" ] && "${docker[@]}" rm -f "$container" >/dev/null 2>&1 || true
  "${docker[@]}" rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "building wheels"
mkdir -p "$work/context" "$work/plugin/rootfs"
# async-timeout: redis needs it on Pythons before 3.11.3 (Debian bookworm's), whatever Python runs this.
python3 -m pip wheel --quiet --wheel-dir "$work/context/wheels" "$here" "async-timeout>=4.0.3"
cp "$here/packaging/plugin/Dockerfile" "$work/context/Dockerfile"

echo "building the root filesystem from $base"
DOCKER_BUILDKIT=0 "${docker[@]}" build --quiet --build-arg "BASE=$base" -t "$image" "$work/context" >/dev/null
container="$("${docker[@]}" create "$image" /bin/true)"
"${docker[@]}" export "$container" | tar -x -C "$work/plugin/rootfs"
cp "$here/packaging/plugin/config.json" "$work/plugin/config.json"

echo "creating plugin $name"
"${docker[@]}" plugin create "$name" "$work/plugin" >/dev/null
if [ "${ENABLE:-1}" = "1" ]; then
  "${docker[@]}" plugin enable "$name" >/dev/null
fi
"${docker[@]}" plugin ls --filter "capability=ipamdriver"

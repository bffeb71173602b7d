#!/usr/bin/env bash
# Build mini-ipam as a managed (v2) Docker plugin and create it in an engine:
#
#   scripts/build-plugin.sh [NAME]          # NAME defaults to "mini"; use it as --ipam-driver NAME:latest
#   scripts/build-plugin.sh --push REGISTRY/mini-ipam:TAG
#                                           # create it under that name and `docker plugin push` it there;
#                                           # nodes then `docker plugin install` it (see the README)
#   scripts/build-plugin.sh --wheels-only DIR
#                                           # only build the wheels the plugin installs, into DIR
#
# Environment:
#   BASE     base image of the plugin's root filesystem, with Python 3.11 (default: python:3.11-slim;
#            without a registry, a local image such as one made by `debootstrap --include=python3,python3-venv`)
#   DOCKER   the docker command, e.g. "docker -H unix:///tmp/engine.sock" (default: docker)
#   ENABLE   1 to enable the plugin once created (default: 1; with --push: 0, a build host is no node)
#   PUSH     1: the same as --push
#   MINI_IPAM_PREFIX  where scripts/install.sh put its virtualenv (default: /opt/mini-ipam), whose pip
#            builds the wheels; without one, a temporary virtualenv does (python3-venv)
#
# The wheels (mini-ipam and its dependencies) are built here first, so the image build needs no index.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$here/scripts/source-tree.sh"
wheels_only=""
push="${PUSH:-0}"
name=""
if [ "${1:-}" = "--wheels-only" ]; then
  wheels_only="${2:?usage: build-plugin.sh --wheels-only DIR}"
else
  if [ "${1:-}" = "--push" ]; then
    push=1
    shift
  fi
  if [ "$push" = "1" ]; then
    [ "$#" -ge 1 ] || { echo "usage: build-plugin.sh --push REGISTRY/mini-ipam:TAG" >&2; exit 2; }
    name="$1"
  else
    name="${1:-mini}"
  fi
  # An engine refuses to create a second plugin of the same content: one name per build.
  [ "$#" -le 1 ] || { echo "usage: build-plugin.sh [--push] NAME (one name per build)" >&2; exit 2; }
fi
enable="${ENABLE:-$([ "$push" = "1" ] && echo 0 || echo 1)}"
if [ "$push" = "1" ]; then
  # A name without a registry host would go to Docker Hub: only a name with one is pushed.
  case "$name" in
    */*) registry="${name%%/*}" ;;
    *) registry="" ;;
  esac
  case "$registry" in
    *.*|*:*|localhost) ;;
    *) echo "build-plugin.sh: --push needs REGISTRY/NAME:TAG (a registry host such as registry.example:5000 first), not '$name'" >&2
       exit 2 ;;
  esac
fi
base="${BASE:-python:3.11-slim}"
docker=(${DOCKER:-docker})
prefix="${MINI_IPAM_PREFIX:-/opt/mini-ipam}"
work="$(mktemp -d)"
image="mini-ipam-plugin-rootfs:$$"
container=""

fail() {
  echo "build-plugin.sh: $*" >&2
  exit 1
}

cleanup() {
  if [ -z "$wheels_only" ]; then
    [ -n "$container" ] && "${docker[@]}" rm -f "$container" >/dev/null 2>&1 || true
    "${docker[@]}" rmi -f "$image" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$wheels_only" ]; then
  command -v "${docker[0]}" >/dev/null ||
    fail "needs the docker command (apt-get install docker.io), or DOCKER naming it; found no '${docker[0]}'"
  "${docker[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    fail "cannot reach the Docker engine with '${docker[*]}': is dockerd running, and may this user use it (root, or the docker group)?"
fi

# pip: the install's own virtualenv has one; else a temporary virtualenv gets one.
if [ -x "$prefix/bin/pip" ]; then
  pip="$prefix/bin/pip"
  echo "building wheels with the pip of $prefix"
elif python3 -m venv "$work/venv" >/dev/null 2>&1; then
  pip="$work/venv/bin/pip"
  echo "building wheels with the pip of a temporary virtualenv"
else
  fail "needs pip to build the wheels: run scripts/install.sh first (its virtualenv in $prefix has pip), or apt-get install python3-venv"
fi

copy_source "$work/source"  # the build leaves the checkout as it was
wheel_dir="${wheels_only:-$work/context/wheels}"
mkdir -p "$wheel_dir" "$work/context" "$work/plugin/rootfs"
# async-timeout: redis needs it on Pythons before 3.11.3 (Debian bookworm's), whatever Python runs this.
"$pip" wheel --quiet --wheel-dir "$wheel_dir" "$work/source" "async-timeout>=4.0.3"
if [ -n "$wheels_only" ]; then
  echo "wheels in $wheel_dir"
  exit 0
fi
cp "$here/packaging/plugin/Dockerfile" "$work/context/Dockerfile"

echo "building the root filesystem from $base"
DOCKER_BUILDKIT=0 "${docker[@]}" build --quiet --build-arg "BASE=$base" -t "$image" "$work/context" >/dev/null
container="$("${docker[@]}" create "$image" /bin/true)"
"${docker[@]}" export "$container" | tar -x -C "$work/plugin/rootfs"
cp "$here/packaging/plugin/config.json" "$work/plugin/config.json"

echo "creating plugin $name"
"${docker[@]}" plugin create "$name" "$work/plugin" >/dev/null
if [ "$push" = "1" ]; then
  echo "pushing plugin $name"
  "${docker[@]}" plugin push "$name" >/dev/null ||
    fail "docker plugin push $name failed: is the registry up, and (without TLS) in the engine's insecure-registries?"
fi
if [ "$enable" = "1" ]; then
  "${docker[@]}" plugin enable "$name" >/dev/null
fi
"${docker[@]}" plugin ls --filter "capability=ipamdriver"

#!/bin/sh
# Offline images for the rig: one Debian bookworm base with python3, dockerd and redis-server,
# used in place of redis:7, docker:dind and python:3.11-slim (see local.env), and a wheelhouse
# so that the driver image installs mini-ipam's dependencies without an index.
#
#   compose/local-base.sh            # needs root, debootstrap, a Debian mirror, pip with an index
#   docker-compose --env-file compose/local.env -f compose/docker-compose.yml up ...
#
# The image goes to the engine the docker CLI talks to (DOCKER_HOST). WORK (default
# /var/tmp/mini-rig-base) keeps the ~650 MB root file system between runs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/var/tmp/mini-rig-base}
image=${BASE_IMAGE:-local/mini-rig-base:1}
mirror=${MIRROR:-http://deb.debian.org/debian}

if [ ! -e "$work/complete" ]; then
    rm -rf "$work/rootfs" # what an interrupted debootstrap left
    mkdir -p "$work"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,docker.io,iptables,redis-server,procps,ca-certificates \
        bookworm "$work/rootfs" "$mirror"
    touch "$work/complete"
fi
tar -C "$work/rootfs" -c . | docker import - "$image"

# The wheelhouse: everything pip needs to build and install mini-ipam without an index, for the
# base image's Python. pip evaluates dependency markers for the Python running it, though, so
# async-timeout, which redis needs only below 3.11.3 (bookworm has 3.11.2), is named explicitly.
repo=$(cd "$here/.." && pwd)
python=$(chroot "$work/rootfs" python3 -c 'import platform; print(platform.python_version())')
mkdir -p "$here/.wheels"
rm -f "$here"/.wheels/mini_ipam-*.whl
python3 -m pip wheel --quiet --no-deps --wheel-dir "$here/.wheels" "$repo"
# The build requirements are pyproject.toml's own (pinned there), so that pip in the image can
# build mini-ipam from /src without an index.
build_requires=$(cd "$repo" && python3 -c \
    'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
# shellcheck disable=SC2086 # one requirement per line, none with spaces
python3 -m pip download --quiet --dest "$here/.wheels" --only-binary=:all: --python-version "$python" \
    $build_requires wheel "async-timeout>=4.0.3" "$here"/.wheels/mini_ipam-*.whl
echo "base image $image and wheelhouse $here/.wheels ready"

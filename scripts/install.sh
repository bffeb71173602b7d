#!/usr/bin/env bash
# Install mini-ipam on a Debian machine, as root: a virtualenv in /opt/mini-ipam and the
# `mini-ipam` command in /usr/local/bin. Run it again to upgrade.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${MINI_IPAM_PREFIX:-/opt/mini-ipam}"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it writes $prefix and /usr/local/bin)" >&2
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3 python3-venv >/dev/null
fi
python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade "$here"
ln -sf "$prefix/bin/mini-ipam" /usr/local/bin/mini-ipam
echo "installed $("$prefix/bin/mini-ipam" --version) in $prefix"

#!/usr/bin/env bash
# Install mini-ipam on a Debian machine, as root: a virtualenv in /opt/mini-ipam and the
# `mini-ipam` command in /usr/local/bin. Run it again from a newer checkout to upgrade, then
# restart the driver (systemctl restart mini-ipam).
#
# The wheel is built from a copy of the checkout in a temporary directory: the checkout is left as
# it was (no build/, no *.egg-info), and the install holds exactly what the checkout holds (a module
# deleted from the checkout is gone from the install too). A checkout whose files have not changed
# since the last install is not built again.
#
# Environment: MINI_IPAM_PREFIX (default /opt/mini-ipam), MINI_IPAM_BIN_DIR (default /usr/local/bin),
# MINI_IPAM_REINSTALL=1 to build and install even when nothing changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${MINI_IPAM_PREFIX:-/opt/mini-ipam}"
bin_dir="${MINI_IPAM_BIN_DIR:-/usr/local/bin}"
stamp="$prefix/.mini-ipam-source"
. "$here/scripts/source-tree.sh"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it writes $prefix and $bin_dir)" >&2
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3 python3-venv >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
copy_source "$work/source"
digest="$(source_digest "$work/source")"

# A virtualenv made by another Python (the system's was upgraded) cannot be reused.
if [ -x "$prefix/bin/python" ] &&
   [ "$("$prefix/bin/python" -c 'import sys; print(sys.version_info[:2])' 2>/dev/null)" != \
     "$(python3 -c 'import sys; print(sys.version_info[:2])')" ]; then
  echo "install.sh: $prefix was made by another Python; making it again"
  python3 -m venv --clear "$prefix"
fi
[ -x "$prefix/bin/pip" ] || python3 -m venv "$prefix"

if [ "${MINI_IPAM_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] &&
   "$prefix/bin/mini-ipam" --version >/dev/null 2>&1; then
  echo "$("$prefix/bin/mini-ipam" --version) in $prefix is already this checkout's; nothing to do"
else
  "$prefix/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/wheel" "$work/source"
  wheel="$(echo "$work"/wheel/mini_ipam-*.whl)"
  # Replace the package's files exactly (the old version's are removed first), then add any
  # dependency the new version needs.
  "$prefix/bin/pip" install --quiet --force-reinstall --no-deps "$wheel"
  "$prefix/bin/pip" install --quiet "$wheel"
  echo "$digest" > "$stamp"
  echo "installed $("$prefix/bin/mini-ipam" --version) in $prefix"
fi
mkdir -p "$bin_dir"
ln -sf "$prefix/bin/mini-ipam" "$bin_dir/mini-ipam"
if command -v systemctl >/dev/null && systemctl is-active --quiet mini-ipam 2>/dev/null; then
  echo "the running driver is the version it started with: systemctl restart mini-ipam to run this one"
fi

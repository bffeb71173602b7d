#!/bin/sh
# Entrypoint of a rig engine: dockerd inside a privileged container (docker-in-docker).
#
# The engine's API socket goes to /run/engine (a volume the check service shares), and its
# plugin directory /run/docker/plugins is a volume shared with this engine's driver service,
# whose socket there, mini.sock, makes `--ipam-driver mini` work. The engine makes no default
# bridge (no 172.17.0.0/16 inside) and uses vfs: it only ever creates networks.
set -eu

mkdir -p /run/engine /run/docker/plugins
set -- dockerd --host=unix:///run/engine/docker.sock --storage-driver=vfs --bridge=none "$@"

if command -v dockerd-entrypoint.sh >/dev/null 2>&1; then
    # The official docker:dind image: its entrypoint prepares cgroups, /sys and iptables.
    # No TLS certificates: the engine listens on nothing but its Unix socket.
    export DOCKER_TLS_CERTDIR=""
    exec dockerd-entrypoint.sh "$@"
fi

# Any other image with dockerd in it (Debian + docker.io, see local-base.sh): the essentials
# of moby's hack/dind script.
if [ -d /sys/kernel/security ] && ! mountpoint -q /sys/kernel/security; then
    mount -t securityfs none /sys/kernel/security || echo "could not mount securityfs; AppArmor may not work" >&2
fi
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    # cgroup v2: controllers can be delegated to dockerd's children only once no process
    # sits in the container's root cgroup, so move everything into a child first.
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
fi
# A pid file left by an unclean stop would keep dockerd from starting again.
rm -f /var/run/docker.pid
exec "$@"

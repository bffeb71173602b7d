# A rig engine: an image with dockerd (docker:dind by default) plus our entrypoint.
# Offline: --build-arg DIND_IMAGE=local/mini-rig-base:1 (see local-base.sh).
ARG DIND_IMAGE=docker:dind
FROM ${DIND_IMAGE}
COPY engine.sh /usr/local/bin/mini-rig-engine
ENTRYPOINT ["/usr/local/bin/mini-rig-engine"]

# mini-ipam from this repository, in a virtualenv; also runs check.py (standard library only).
# Build context: the repository root. Offline: --build-arg PYTHON_IMAGE=local/mini-rig-base:1
# --build-arg "PIP_ARGS=--no-index --find-links /src/compose/.wheels" (see local-base.sh).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG PIP_ARGS=""
# README.md* : the build reads the readme named in pyproject.toml, when there is one.
COPY pyproject.toml README.md* /src/
COPY mini_ipam /src/mini_ipam
COPY stores /src/stores
COPY compose /src/compose
RUN python3 -m venv /opt/mini-ipam \
 && /opt/mini-ipam/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_ARGS} /src
ENV PATH=/opt/mini-ipam/bin:$PATH
ENTRYPOINT []
CMD ["mini-ipam", "serve", "--help"]

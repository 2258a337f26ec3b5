# dinotiles: a DINOv2 cluster tile server.
#   podman build --target cpu -t dinotiles:cpu .      (default target)
#   podman build --target gpu -t dinotiles:gpu .      (onnxruntime-gpu, CUDA libraries from pip)
# The build stage has torch (the `export` extra) and prepares the demo bundle; the runtime stages have
# neither torch nor compilers, run as a non-root user and write only to /cache (read-only root works).
# torch==2.13.0 comes from build/wheelhouse (`make image` puts the CPU wheel there: PyPI's is the CUDA one).
# Where pip reaches the index through a TLS-inspecting proxy, pass its CA as a build secret:
#   --secret id=cabundle,src=/etc/ssl/certs/ca-certificates.crt

FROM debian:bookworm-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
# the distribution's current python3 (security updates) rather than a pinned, aging version
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# -- build: the wheel of this project, and the demo bundle (weights → ONNX, shipped codebook, sample image);
#    the bundle's torch/ weights (DINOTILES_ENCODER=torch) stay here: the runtime images have no torch
FROM base AS build
WORKDIR /src
COPY build/wheelhouse /wheelhouse
# torch first, in its own layer: it is the heavy part and changes only with its pin
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q --find-links /wheelhouse "torch==2.13.0"
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
COPY export ./export
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
 && /opt/build/bin/pip install -q --find-links /wheelhouse ".[cpu,export]" \
 && /opt/build/bin/pip wheel -q --no-deps -w /dist . \
 && DINOTILES_DEMO_DIR=/opt/demo /opt/build/bin/dinotiles demo \
 && rm -rf /opt/demo/wheels /opt/demo/weights /opt/demo/bundle/torch

# -- runtime: one ONNX Runtime per image, no torch, no compilers
FROM base AS runtime
ARG RUNTIME_EXTRA=cpu
# COPY (not a bind mount): the layer cache must see a changed wheel
COPY --from=build /dist /dist
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
 && python3 -m venv /opt/dinotiles \
 && /opt/dinotiles/bin/pip install -q "$(ls /dist/dinotiles-*.whl)[${RUNTIME_EXTRA}]" \
 && /opt/dinotiles/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && useradd --system --uid 10001 --home-dir /cache --shell /usr/sbin/nologin dinotiles \
 && mkdir -p /cache /data \
 && chown dinotiles /cache
COPY --from=build /opt/demo/bundle /opt/dinotiles-data/bundle
COPY --from=build /opt/demo/data /opt/dinotiles-data/data
ENV PATH=/opt/dinotiles/bin:$PATH \
    HOME=/cache \
    XDG_CACHE_HOME=/cache \
    NUMBA_CACHE_DIR=/cache/numba \
    MPLCONFIGDIR=/cache/matplotlib \
    MALLOC_ARENA_MAX=2 \
    DINOTILES_BUNDLE=/opt/dinotiles-data/bundle \
    DINOTILES_LOCAL_ROOTS=/data:/opt/dinotiles-data/data
VOLUME ["/cache"]
USER 10001
WORKDIR /cache
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["dinotiles", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS gpu
# onnxruntime-gpu with its CUDA/cuDNN libraries from pip (the `gpu` extra); needs the NVIDIA container toolkit
USER 0
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
 && /opt/dinotiles/bin/pip uninstall -q -y onnxruntime \
 && /opt/dinotiles/bin/pip install -q "$(ls /dist/dinotiles-*.whl)[gpu]" "onnxruntime-gpu[cuda,cudnn]" \
 && /opt/dinotiles/bin/python -c "import importlib.metadata as m; m.version('onnxruntime-gpu')"
USER 10001

FROM gpu AS ray
# the KubeRay image (infrastructure/kubernetes/ray): the GPU runtime plus Ray, boto3 and stac-pydantic
# for `dinotiles batch`; Ray pinned to the rayVersion the RayJob declares (head and workers must agree)
USER 0
RUN --mount=type=secret,id=cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
 && /opt/dinotiles/bin/pip install -q "$(ls /dist/dinotiles-*.whl)[batch]" "ray[default]==2.60.0" \
 && /opt/dinotiles/bin/dinotiles batch --help > /dev/null
USER 10001
CMD ["ray", "start", "--head", "--block"]

FROM runtime AS cpu

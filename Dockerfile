# latentcast server on a CUDA runtime. Build: docker build -t latentcast .
# Run:   docker run --gpus all -p 8000:8000 -e LATENTCAST_API_TOKEN=... latentcast --preset sd-turbo
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV

WORKDIR /opt/latentcast
# Dependencies first so code edits do not reinstall torch.
COPY pyproject.toml README.md ./
COPY app app
COPY streaming streaming
COPY pipelines pipelines
COPY models models
COPY web web
# Extras (pyproject.toml): the GPU engines, OSC/MIDI live control and the Ray cluster; e.g.
# --build-arg EXTRAS=gpu for a lean single-machine image.
ARG EXTRAS=gpu,live,cluster
RUN pip install torch==2.13.0 && pip install ".[${EXTRAS}]"

# Inside a container the server must listen on all interfaces; it then requires an API token.
ENV LATENTCAST_HOST=0.0.0.0 LATENTCAST_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["latentcast", "serve"]

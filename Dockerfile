# One image for the api, migrate and worker services.
#
# Base: python:3.11-slim plus torch's default Linux wheel from PyPI, which already bundles the CUDA runtime,
# cuDNN and NCCL (as nvidia-* wheels). The GPU host needs only the NVIDIA driver and the container toolkit,
# so a multi-gigabyte nvidia/cuda base image would only duplicate those libraries. For a CPU-only image
# (smaller, e.g. for the api alone) build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VITQ_HOME=/var/lib/vitq \
    VITQ_STORAGE=/var/lib/vitq/storage \
    VITQ_DATA_DIR=/data

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt

COPY api ./api
COPY vit ./vit
COPY worker ./worker
COPY migrations ./migrations
COPY examples ./examples
# Editable: the code runs from /app, next to migrations/ and examples/ (the dashboard offers the examples).
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 vitq \
    && mkdir -p /var/lib/vitq/storage /data \
    && chown -R vitq /var/lib/vitq /data

USER vitq
EXPOSE 8000
CMD ["vitq", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]

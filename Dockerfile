# Two images from one Dockerfile, every layer they share built once:
#   --target api     the API, the CLI and migrations: no torch (api/ never imports it)
#   --target worker  the same plus the trainer's packages: torch's default Linux wheel from PyPI, which bundles
#                    the CUDA runtime, cuDNN and NCCL, so a GPU host needs only the driver and the NVIDIA
#                    container toolkit. For a CPU-only worker (about 5 GB smaller) build with
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Layer order: dependencies (from a requirements file generated from pyproject.toml's dependency list alone),
# then the source, so a source or README change rebuilds only the last, seconds-long layers.
# A pip configuration for a mirror (an offline host's local index) comes in as the build secret `pip.conf`:
# it changes no cache key and stays out of the image and its history.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VITQ_HOME=/var/lib/vitq \
    VITQ_STORAGE=/var/lib/vitq/storage \
    VITQ_DATA_DIR=/data
# Owned by vitq in the image, so an empty named volume mounted here starts owned by vitq too.
RUN useradd --create-home --uid 1000 vitq \
    && mkdir -p /var/lib/vitq/storage /data \
    && chown -R vitq:vitq /var/lib/vitq /data
WORKDIR /app

FROM base AS requirements
COPY pyproject.toml deploy/image/requirements.py /tmp/
RUN python /tmp/requirements.py /tmp/pyproject.toml /requirements

FROM base AS api-deps
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=bind,from=requirements,source=/requirements,target=/requirements \
    pip install -r /requirements/api.txt

FROM api-deps AS worker-deps
ARG TORCH_INDEX_URL=""
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=bind,from=requirements,source=/requirements,target=/requirements \
    pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /requirements/worker.txt

# The source alone, as one layer to copy into both images.
FROM scratch AS source
COPY pyproject.toml README.md alembic.ini /app/
COPY api /app/api
COPY vit /app/vit
COPY worker /app/worker
COPY migrations /app/migrations
COPY examples /app/examples
COPY deploy/image/entrypoint.sh deploy/image/worker_alive.py /app/deploy/image/

# Editable: the code runs from /app, next to migrations/ and examples/ (the dashboard offers the examples).
FROM api-deps AS api
COPY --from=source /app /app
RUN pip install --no-deps --no-build-isolation --no-cache-dir -e . && python -c "import api.server.app, api.cli.main"
EXPOSE 8000
ENTRYPOINT ["/app/deploy/image/entrypoint.sh"]
CMD ["vitq", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]

FROM worker-deps AS worker
COPY --from=source /app /app
RUN pip install --no-deps --no-build-isolation --no-cache-dir -e . && python -c "import worker.tasks"
ENTRYPOINT ["/app/deploy/image/entrypoint.sh"]
CMD ["python", "-m", "worker", "--concurrency", "1"]

# syntax=docker/dockerfile:1
# One image, two entrypoints: the agent service (default) and the tool service.
#   docker build -t durable-agents .
#   docker run durable-agents                      # python -m app: Restate endpoint 9080 (HTTP/2), approvals 9081
#   docker run durable-agents python -m tools      # the tool service on 9090
# restate-server runs from its own image (deploy/k8s/base/restate.yaml); register the agent
# service with it. Production is the default: both services refuse to start until every secret
# (>= 32 bytes) and RESTATE_IDENTITY_PUBLIC_KEYS are given (docs/security.md), and never fall back
# to a default. Linted by hadolint in `make test` (tests/deploy/test_image.py).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# The console's diagram library, the one browser asset the agent service serves, from the same
# lock file as development. --omit=optional leaves out the Restate binaries (~100 MB).
FROM node:20.20.2-bookworm-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error

# Dependencies are built in a throwaway stage, so the runtime image carries no compiler, pip
# cache or build metadata: only the virtualenv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml README.md ./
COPY common ./common
COPY app ./app
COPY tools ./tools
COPY deploy ./deploy
RUN pip install .

FROM ${PYTHON_IMAGE}
# Tesseract (with its English data) does the receipts' OCR; the expense agent fails without it.
# Pinned to bookworm's versions, the ones the tests run against (docs/platform notes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr=5.3.0-2 tesseract-ocr-eng=1:4.1.0-2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /srv agents
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ENV=production \
    APP_HOST=0.0.0.0 TOOLS_HOST=0.0.0.0 \
    OMP_THREAD_LIMIT=1
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY --from=build /build/common ./common
COPY --from=build /build/app ./app
COPY --from=build /build/tools ./tools
COPY --from=assets /assets/node_modules/mermaid/dist/mermaid.min.js ./node_modules/mermaid/dist/mermaid.min.js
# var/ is the only writable path (a SQLite file for a single-machine run; production points
# DATABASE_URL at PostgreSQL and mounts the root file system read-only).
RUN mkdir var && chown agents:agents var
USER 10001:10001

EXPOSE 9080 9081 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "common.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]

# One image, two entrypoints: the agent service (default) and the tool service.
#   docker build -t durable-agents .
#   docker run durable-agents                      # python -m app  (Restate endpoint, HTTP/2 on 9080)
#   docker run durable-agents python -m tools      # the tool service on 9090
# restate-server itself runs from its own image or binary; register the agent service with it.
# Production is the default: both services refuse to start until every secret (>= 32 bytes) and
# RESTATE_IDENTITY_PUBLIC_KEYS are given (docs/security.md); they never fall back to a default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ENV=production \
    APP_HOST=0.0.0.0 TOOLS_HOST=0.0.0.0 \
    OMP_THREAD_LIMIT=1

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY common ./common
COPY app ./app
COPY tools ./tools
COPY deploy ./deploy
RUN pip install --no-cache-dir . && useradd --create-home agents && mkdir -p var && chown agents var
USER agents

EXPOSE 9080 9081 9090
CMD ["python", "-m", "app"]

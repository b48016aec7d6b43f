# Two images from one file: `api` (no torch, no CUDA) and `worker` (torch; pass a CUDA build via TORCH).
FROM python:3.11-slim AS base
WORKDIR /app
# PYTHONPATH: the code is imported from /app (not the installed copy), so it finds frontend/, alembic.ini
# and migrations/ beside it.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app
COPY pyproject.toml README.md alembic.ini ./
COPY backend backend
COPY worker worker
COPY dynascope dynascope
COPY frontend frontend
COPY migrations migrations

FROM base AS api
RUN pip install ".[server]"
EXPOSE 8000

FROM base AS worker
# e.g. --build-arg TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
ARG TORCH=torch==2.13.0
RUN pip install $TORCH && pip install ".[worker]"

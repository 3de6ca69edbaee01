# The churn prediction service (and the training CLI, for the one-shot trainer in docker-compose.yml).
#   docker build -t churn-service .
#   docker run -v churn-models:/app/models churn-service python -m training     # publish a bundle
#   docker run -p 8000:8000 -v churn-models:/app/models -v churn-data:/data churn-service
# Bundles live in /app/models (a volume), the prediction log in /data/predictions.sqlite3.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

WORKDIR /app

# Dependencies first, so code changes reuse this layer. CPU-only torch from the PyTorch index
# (the default wheel pulls in gigabytes of CUDA); requirements.txt then finds it already satisfied.
COPY requirements.txt .
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -r requirements.txt

COPY bundle ./bundle
COPY app ./app
COPY training ./training
COPY scoring ./scoring

RUN useradd --create-home --uid 10001 churn \
    && mkdir -p /app/models /data \
    && chown -R churn:churn /app/models /data
USER churn

# The compiled tree kernels (app/serving/trees.py) are built once, here, into the service user's
# cache, so no container start spends seconds compiling them.
ENV NUMBA_CACHE_DIR=/home/churn/.cache/numba
RUN python -m app.serving.trees

ENV CHURN_HOST=0.0.0.0 \
    CHURN_PORT=8000 \
    CHURN_MODEL_DIR=/app/models \
    CHURN_DATABASE_URL=sqlite:////data/predictions.sqlite3 \
    CHURN_PREDICTION_LOG_SPOOL_DIR=/data/prediction-log-spool
VOLUME ["/app/models", "/data"]
EXPOSE 8000

# Liveness only (/health); orchestrators should gate traffic on /ready.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c 'import os, sys, urllib.request as u; port = os.environ.get("CHURN_PORT", "8000"); sys.exit(u.urlopen("http://127.0.0.1:" + port + "/health", timeout=2).status != 200)'

CMD ["python", "-m", "app"]

# digestbot: one process (scheduler + Slack + Telegram + HTTP on $PORT).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DIGEST_DB=/data/digestbot.db \
    DIGEST_CONFIG=/app/config/digestbot.toml \
    PORT=3000

# ca-certificates: openai 3.x verifies TLS against the OS trust store.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 digestbot \
    && mkdir -p /data && chown digestbot /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY digest_core ./digest_core
COPY config ./config
RUN pip install .

USER digestbot
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=60s --timeout=5s --start-period=30s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/healthz', timeout=4)"
# exec form: digestbot is PID 1 and receives SIGTERM from `docker stop` directly.
ENTRYPOINT ["digestbot"]
CMD ["serve"]

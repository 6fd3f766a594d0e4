# The fraudstream service and producers (same image, different commands).
# Exact base image; runs as an unprivileged user; HEALTHCHECK asks /readyz, so
# the container is healthy only when Kafka and Redis answer and a scorer is loaded.
FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FRAUDSTREAM_METRICS_HOST=0.0.0.0 \
    FRAUDSTREAM_METRICS_PORT=9108
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fraudstream ./fraudstream
COPY service ./service
COPY producers ./producers
COPY evaluation ./evaluation
COPY bench ./bench
COPY devstack ./devstack
RUN pip install . \
    && groupadd --system --gid 10001 fraudstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fraudstream
USER 10001:10001
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FRAUDSTREAM_METRICS_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["fraudstream"]
CMD ["serve"]

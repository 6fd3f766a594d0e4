# The fraudstream service and producers (same image, different commands).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fraudstream ./fraudstream
COPY service ./service
COPY producers ./producers
COPY evaluation ./evaluation
COPY bench ./bench
COPY devstack ./devstack
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["fraudstream"]
CMD ["serve"]

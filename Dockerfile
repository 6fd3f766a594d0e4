# The fraudstream service and producers (same image, different commands).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY producers ./producers
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["fraudstream"]
CMD ["serve"]

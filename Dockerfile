FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/wrenn
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
COPY openapi ./openapi
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/wrenn wrenn && mkdir -p /var/lib/wrenn \
    && chown wrenn /var/lib/wrenn
USER wrenn
ENV WRENN_DIR=/var/lib/wrenn WRENN_CP_LISTEN_ADDR=:8080
EXPOSE 8080
CMD ["wrenn-cp", "serve", "--no-agent"]

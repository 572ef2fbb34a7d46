FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir .

COPY . .
# The machine agent, which `manage.py agents` (the compose file's demo agents) runs.
RUN pip install --no-cache-dir ./agent
RUN DEBUG=0 SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0 \
    && useradd --create-home --uid 1000 simsched \
    && chown -R simsched /app
USER simsched

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
ENV HOST=0.0.0.0 PORT=8000 WEB_CONCURRENCY=2
CMD ["sh", "-c", "python manage.py migrate --noinput && exec bin/serve-http"]

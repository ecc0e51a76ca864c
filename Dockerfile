# The service image: the API on port 8000 against the PostgreSQL named by DATABASE_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HYBRID_HOST=0.0.0.0 \
    HYBRID_PORT=8000

WORKDIR /srv/hybrid
# The CPU build of PyTorch keeps the image free of several GB of CUDA libraries.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY sql ./sql
COPY alembic ./alembic
COPY samples ./samples
RUN pip install --no-cache-dir -e .

RUN useradd --system --home /srv/hybrid hybrid
USER hybrid
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready')"
CMD ["hybrid", "serve"]

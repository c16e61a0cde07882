# syntax=docker/dockerfile:1
# One image for every CloudTask service: the command picks the service
# (docker run cloudtask api | worker | results | scheduler | migrate).

# --- build: the cloudtask wheel and the wheels of its dependencies ---------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed into a slim image, run as an unprivileged user -------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CLOUDTASK_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels cloudtask \
 && useradd --system --uid 10001 --user-group --home-dir /app --create-home cloudtask
COPY deploy/docker/healthcheck.py /usr/local/bin/cloudtask-healthcheck
USER 10001:10001
WORKDIR /app
EXPOSE 8080 9091 9092 9093
# The service's own health path on its own port, read from the command line of PID 1; set
# HEALTHCHECK_URL to override. Python, because the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/cloudtask-healthcheck"]
ENTRYPOINT ["cloudtask"]
CMD ["api"]

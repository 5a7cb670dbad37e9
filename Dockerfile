# syntax=docker/dockerfile:1
# Build stage: turn the package and its dependencies into wheels.
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.py README.md ./
COPY chatgpt_apiserver ./chatgpt_apiserver
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the installed wheels, a non-root user and the config directory.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chatgpt \
    && mkdir -p /etc/chatgpt-apiserver \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/chatgpt-apiserver
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY etc/chatgpt-apiserver/chatgpt-apiserver.example.json /etc/chatgpt-apiserver/
# Every setting can be overridden with CHATGPT_APISERVER_<NAME>; these make the container listen publicly
# and read its config from the mounted /etc/chatgpt-apiserver/chatgpt-apiserver.json.
ENV CHATGPT_APISERVER_HOST=0.0.0.0 \
    CHATGPT_APISERVER_PORT=8080 \
    CHATGPT_APISERVER_CONFIG_PATH=/etc/chatgpt-apiserver \
    CHATGPT_APISERVER_STATE_DIR=/var/lib/chatgpt-apiserver \
    PYTHONUNBUFFERED=1
USER 10001
VOLUME /var/lib/chatgpt-apiserver
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatgpt-apiserver"]

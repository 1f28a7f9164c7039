# syntax=docker/dockerfile:1
# Build: make docker   Run: docker run -p 50051:50051 -p 8080:8080 -p 9090:9090 igbutton
FROM python:3.11-slim AS build
WORKDIR /src
# VERSION and LICENSE are read by both builds (clients/python/VERSION links to ../../VERSION).
COPY constraints.txt pyproject.toml setup.py README.md VERSION LICENSE ./
COPY clients/python clients/python
COPY service service
RUN python -m venv /opt/igbutton \
 && /opt/igbutton/bin/pip install --no-cache-dir -c constraints.txt ./clients/python .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/igbutton --create-home igbutton
COPY --from=build /opt/igbutton /opt/igbutton
ENV PATH=/opt/igbutton/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IGBUTTON_GRPC__LISTEN=0.0.0.0:50051 \
    IGBUTTON_HTTP__HOST=0.0.0.0 \
    IGBUTTON_WEBHOOK__HOST=0.0.0.0 \
    IGBUTTON_STORAGE__SQLITE_PATH=/var/lib/igbutton/igbutton.db
USER igbutton
WORKDIR /var/lib/igbutton
VOLUME ["/var/lib/igbutton"]
EXPOSE 50051 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/readyz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["igbutton-server"]

# Build: make docker (Docker or Podman).  Run and test: README.md, "Deploying".
# No "# syntax=" line: it would make BuildKit pull a frontend image from Docker Hub, and the
# built-in one (Docker 23+, Podman, Buildah) has everything used here.
#
# The base: CPython 3.11 on Debian 12 (bookworm), pinned by digest so a rebuild gets the same
# bytes. The digest is the multi-platform index of python:3.11-slim-bookworm (Python 3.11.16,
# Debian snapshot of 2026-08-24) as recorded by docker-library/repo-info
# (repos/python/remote/3.11-slim-bookworm.md); move it on deliberately, to a digest you have
# pulled yourself. Any image with python3 3.11 and its venv module fits: where no registry can
# be reached, deploy/container/build-base.sh makes one from Debian packages and
#   make docker BASE_IMAGE=localhost/igbutton-base:bookworm
# uses it.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# VERSION and LICENSE are read by both builds (clients/python/VERSION links to ../../VERSION).
COPY constraints.txt pyproject.toml setup.py README.md VERSION LICENSE ./
COPY clients/python clients/python
COPY service service
# PIP_CERT: a CA bundle for a TLS-inspecting proxy between the build and PyPI, passed as a
# build secret (make docker does when PIP_CERT is set) so it never lands in a layer. pip
# byte-compiles here, as root: the runtime user cannot write under /opt/igbutton.
RUN --mount=type=secret,id=pip_cert \
    set -eu; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python3 -m venv /opt/igbutton; \
    /opt/igbutton/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c constraints.txt ./clients/python .

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
# A fixed numeric user and group, so Kubernetes' runAsNonRoot can check it and a volume can
# be chowned to it ahead of time. The code is root's and read-only to it; only the data
# directory (the SQLite file) is its own.
RUN set -eu; \
    groupadd --gid 10001 igbutton; \
    useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/igbutton --no-create-home \
      --shell /usr/sbin/nologin igbutton; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/igbutton
COPY --from=build /opt/igbutton /opt/igbutton
LABEL org.opencontainers.image.title="igbutton" \
      org.opencontainers.image.description="gRPC gateway for Instagram button template messages and their postbacks" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PATH=/opt/igbutton/bin:$PATH \
    HOME=/var/lib/igbutton \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IGBUTTON_GRPC__LISTEN=0.0.0.0:50051 \
    IGBUTTON_HTTP__HOST=0.0.0.0 \
    IGBUTTON_WEBHOOK__HOST=0.0.0.0 \
    IGBUTTON_STORAGE__SQLITE_PATH=/var/lib/igbutton/igbutton.db
USER 10001:10001
WORKDIR /var/lib/igbutton
VOLUME ["/var/lib/igbutton"]
EXPOSE 50051 8080 9090
# Reads the same IGBUTTON_* settings as the server, so it follows IGBUTTON_HTTP__PORT (or the
# file named by IGBUTTON_CONFIG_FILE); healthy once /readyz answers 200.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["igbutton-server", "healthcheck"]
# The server drains on SIGTERM within grpc.shutdown_grace_seconds (10 s by default): give
# `docker stop -t` / terminationGracePeriodSeconds more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["igbutton-server"]

#!/usr/bin/env bash
# Build, from Debian packages, a base image equivalent to the Dockerfile's pinned BASE_IMAGE
# (Debian bookworm with CPython 3.11 and a working venv module), for machines that reach the
# Debian archive but no container registry. Usage:
#
#   deploy/container/build-base.sh [TAG]      # default TAG: localhost/igbutton-base:bookworm
#   make docker BASE_IMAGE=localhost/igbutton-base:bookworm
#
# Needs root (or a working `mmdebstrap --mode=unshare`), mmdebstrap, and podman or buildah.
# CONTAINER_ENGINE picks the importer (podman, buildah or docker); SUITE and MIRROR the archive.
# The image records what it was built from in labels, so `podman inspect` says so.
set -euo pipefail

tag=${1:-localhost/igbutton-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
engine=${CONTAINER_ENGINE:-$(command -v podman >/dev/null && echo podman || echo buildah)}

tarball=$(mktemp --suffix=.tar)
trap 'rm -f "$tarball"' EXIT

# minbase: essential packages + apt, like debian:*-slim. python3-venv brings ensurepip, which
# `python3 -m venv` needs; ca-certificates so the service can reach graph.instagram.com.
# Documentation, man pages and locales other than C are left out (as the slim images do);
# mmdebstrap removes apt's package lists and caches at the end.
mmdebstrap \
  --variant=minbase \
  --include=python3,python3-venv,ca-certificates,tzdata,netbase \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "$suite" "$tarball" \
  "deb $mirror $suite main" \
  "deb $mirror $suite-updates main" \
  "deb $security $suite-security main"

# awk reads to the end: leaving early would fail the pipeline (pipefail) with SIGPIPE.
python_version=$(tar -xOf "$tarball" ./var/lib/dpkg/status \
  | awk '/^Package: /{p = ($2 == "python3")} p && /^Version: /{v = $2} END{print v}')
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# PATH explicitly: `docker import` sets none, and the Dockerfile's ENV PATH=...:$PATH builds on it.
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
changes=(
  --change "ENV PATH=$path"
  --change 'ENV LANG=C.UTF-8'
  --change 'CMD ["python3"]'
  --change "LABEL org.opencontainers.image.title=igbutton-base"
  --change "LABEL org.opencontainers.image.description=Debian $suite minbase + python3 $python_version, built by deploy/container/build-base.sh with mmdebstrap"
  --change "LABEL io.igbutton.base.created=$created"
  --change "LABEL io.igbutton.base.built-by=mmdebstrap"
)

case "$engine" in
  podman) podman import --quiet "${changes[@]}" "$tarball" "$tag" >/dev/null ;;
  docker) docker import "${changes[@]}" "$tarball" "$tag" >/dev/null ;;
  buildah)
    # buildah has no `import`: an empty container, the tree copied in, then committed.
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$tarball" / >/dev/null
    buildah config --env "PATH=$path" --env LANG=C.UTF-8 --cmd python3 \
      --label org.opencontainers.image.title=igbutton-base \
      --label "org.opencontainers.image.description=Debian $suite minbase + python3 $python_version, built by deploy/container/build-base.sh with mmdebstrap" \
      --label "io.igbutton.base.created=$created" \
      --label io.igbutton.base.built-by=mmdebstrap "$ctr"
    buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
    ;;
  *) echo "build-base.sh: unknown CONTAINER_ENGINE $engine" >&2; exit 2 ;;
esac
echo "built $tag: Debian $suite + python3 $python_version from $mirror (mmdebstrap)"

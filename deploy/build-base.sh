#!/bin/sh
# Build a Debian bookworm base image without an image registry: debootstrap a minimal root from
# the Debian mirror and import it into Docker. Then:
#   docker build -f deploy/Dockerfile --build-arg BASE=matrix-sfu-base:bookworm -t matrix-sfu .
set -eu
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
# debootstrap lists the release only: add its updates and the security archive, so that the
# images' apt-get installs get fixed packages
cat > "$ROOT"/etc/apt/sources.list <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
tar -C "$ROOT" -c . | docker import - matrix-sfu-base:bookworm

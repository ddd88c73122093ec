#!/usr/bin/env bash
# Build the lab's Docker images without Docker Hub (which the lab cannot reach):
#   1. a Debian 12 base image: `docker import` of the lab's debootstrap template;
#   2. Hermes Agent:   pip install hermes-agent==0.19.0 on it (entrypoint compatible with
#      the official image: HERMES_HOME=/opt/data, starts as root, drops to HERMES_UID/GID,
#      default command `gateway run`);
#   3. LiteLLM proxy:  pip install 'litellm[proxy]==1.82.6' on it (entrypoint `litellm`,
#      as the official image's compose usage: command ["--config", FILE, "--port", "4000"]).
# Each image is `docker save`d to a tarball cached under $PVESTACK_LAB_DIR/images, which
# the lab stack file hands to pvestack (pushed into the CT and `docker load`ed).
#
# Uses the HOST's Docker engine. If none is running, starts dockerd (docker.io) with its
# own pid file, no iptables and no bridge (builds use --network host, so the lab's
# NAT/forwarding rules are left alone), and stops it by that pid afterwards.
set -euo pipefail

LAB_DIR=${PVESTACK_LAB_DIR:-/var/lib/pvestack-lab}
CACHE=$LAB_DIR/cache
OUT=$LAB_DIR/images
HERMES_VERSION=${HERMES_VERSION:-0.19.0}
LITELLM_VERSION=1.82.6 # pinned: 1.82.7 and 1.82.8 were malicious releases
TEMPLATE=debian-12-standard_12.12-1_amd64.tar.zst
BASE=pvestack-lab/debian:12
HERMES_IMAGE=pvestack-lab/hermes-agent:$HERMES_VERSION
LITELLM_IMAGE=pvestack-lab/litellm:$LITELLM_VERSION
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}

mkdir -p "$OUT" "$CACHE"
log() { printf '==> %s\n' "$*"; }

# ---------------------------------------------------------------- the engine
started_pid=""
stop_dockerd() {
  if [ -n "$started_pid" ] && kill -0 "$started_pid" 2>/dev/null; then
    log "stopping the dockerd this script started (pid $started_pid)"
    kill "$started_pid"
    for _ in $(seq 1 50); do kill -0 "$started_pid" 2>/dev/null || break; sleep 0.2; done
  fi
}
trap stop_dockerd EXIT

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (pid file $OUT/dockerd.pid)"
  dockerd --pidfile "$OUT/dockerd.pid" --iptables=false --ip-forward=false --bridge=none \
    >"$OUT/dockerd.log" 2>&1 &
  started_pid=$!
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $OUT/dockerd.log" >&2; exit 1; }
fi

# ---------------------------------------------------------------- the base image
if [ ! -s "$CACHE/$TEMPLATE" ]; then
  log "building the lab template (debootstrap) into $CACHE"
  "$PY" -c 'import sys; from pathlib import Path; from pvelab.runtime import template; template.build(Path(sys.argv[1]))' "$CACHE"
fi
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  log "docker import $TEMPLATE as $BASE"
  zstd -dc "$CACHE/$TEMPLATE" | docker import - "$BASE" >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"; stop_dockerd' EXIT
# The host's trust store, for pip during the build only (this machine's egress may use
# its own CA). A public CA bundle, not a secret.
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/build-ca.crt"

build() { # build IMAGE TARBALL (Dockerfile and files in $ctx)
  local image=$1 tarball=$2
  if [ -s "$tarball" ] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image: cached ($tarball)"
    return
  fi
  log "building $image"
  DOCKER_BUILDKIT=0 docker build --network host -q -t "$image" "$ctx" >/dev/null
  log "docker save $image > $tarball"
  docker save "$image" -o "$tarball.part"
  mv "$tarball.part" "$tarball"
}

# ---------------------------------------------------------------- Hermes Agent
cat >"$ctx/entrypoint.sh" <<'SH'
#!/bin/sh
# Hermes image entrypoint (the official image's contract): start as root, own the data
# dir by HERMES_UID/HERMES_GID (aliases PUID/PGID), run `hermes "$@"` as that user.
set -eu
uid=${HERMES_UID:-${PUID:-10000}}
gid=${HERMES_GID:-${PGID:-10000}}
export HERMES_HOME="${HERMES_HOME:-/opt/data}"
export HOME="$HERMES_HOME"
mkdir -p "$HERMES_HOME"
chown "$uid:$gid" "$HERMES_HOME"
if [ -f "$HERMES_HOME/.env" ]; then chmod 600 "$HERMES_HOME/.env"; fi
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- hermes "$@"
fi
exec hermes "$@"
SH
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv ca-certificates git \\
 && rm -rf /var/lib/apt/lists/*
COPY build-ca.crt /tmp/build-ca.crt
RUN python3 -m venv /opt/hermes \\
 && PIP_CERT=/tmp/build-ca.crt /opt/hermes/bin/pip install --no-cache-dir 'hermes-agent==$HERMES_VERSION' \\
 && rm -f /tmp/build-ca.crt
RUN groupadd -g 10000 hermes && useradd -u 10000 -g 10000 -d /opt/data -M -s /bin/sh hermes
ENV PATH=/opt/hermes/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    HERMES_HOME=/opt/data PYTHONUNBUFFERED=1
COPY entrypoint.sh /usr/local/bin/hermes-entrypoint
RUN chmod 0755 /usr/local/bin/hermes-entrypoint
WORKDIR /opt/data
ENTRYPOINT ["/usr/local/bin/hermes-entrypoint"]
CMD ["gateway", "run"]
DOCKERFILE
build "$HERMES_IMAGE" "$OUT/hermes-agent-$HERMES_VERSION.tar"

# ---------------------------------------------------------------- LiteLLM proxy
rm -f "$ctx/entrypoint.sh"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY build-ca.crt /tmp/build-ca.crt
RUN python3 -m venv /opt/litellm \\
 && PIP_CERT=/tmp/build-ca.crt /opt/litellm/bin/pip install --no-cache-dir 'litellm[proxy]==$LITELLM_VERSION' \\
 && rm -f /tmp/build-ca.crt
ENV PATH=/opt/litellm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONUNBUFFERED=1
WORKDIR /app
EXPOSE 4000
ENTRYPOINT ["litellm"]
CMD ["--port", "4000"]
DOCKERFILE
build "$LITELLM_IMAGE" "$OUT/litellm-$LITELLM_VERSION.tar"

log "images:"
printf '  %s  %s\n' "$HERMES_IMAGE" "$OUT/hermes-agent-$HERMES_VERSION.tar" \
  "$LITELLM_IMAGE" "$OUT/litellm-$LITELLM_VERSION.tar"

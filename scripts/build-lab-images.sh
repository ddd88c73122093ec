#!/usr/bin/env bash
# Build the lab's Docker images without Docker Hub (which the lab cannot reach):
#   1. a Debian 12 base image: `docker import` of the lab's debootstrap template;
#   2. Hermes Agent:   pip install hermes-agent==V on it, for V in 0.18.2 and 0.19.0, tagged
#      pvestack-lab/hermes-agent:V-boot2 (with the messaging extra: the gateway platforms and
#      the API server need aiohttp), with a boot like the official image's (below);
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
# Two releases, so an upgrade can be tested for real. HERMES_REV: bump it when the image
# recipe below changes, so a tarball of an older recipe is never reused.
HERMES_VERSIONS=${HERMES_VERSIONS:-0.18.2 0.19.0}
HERMES_REV=boot2
LITELLM_VERSION=1.82.6 # pinned: 1.82.7 and 1.82.8 were malicious releases
TEMPLATE=debian-12-standard_12.12-1_amd64.tar.zst
BASE=pvestack-lab/debian:12
HERMES_REPO=pvestack-lab/hermes-agent
LITELLM_IMAGE=pvestack-lab/litellm:$LITELLM_VERSION
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}

mkdir -p "$OUT" "$CACHE"
log() { printf '==> %s\n' "$*"; }
# One build at a time on this machine (several test runs may call this script at once).
exec 9>"$OUT/.build.lock"
flock 9

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
# One image per hermes-agent release (an upgrade can be tested for real). The boot is
# written by us from the official image's documented behaviour (docker/stage2-hook.sh and
# scripts/docker_config_migrate.py in NousResearch/hermes-agent; none of it is copied):
#   start as root; remap the `hermes` user to HERMES_UID/HERMES_GID (aliases PUID/PGID);
#   own the data dir (and its top-level files) by it; chmod config.yaml 640 and .env 600;
#   append a generated API_SERVER_KEY to an existing .env that has none; migrate
#   config.yaml with hermes-agent's own code (check_config_version + migrate_config,
#   backups next to it) whenever its raw _config_version is older than the release's;
#   drop privileges (setpriv, with the user's groups) and run `hermes "$@"`.
cat >"$ctx/entrypoint.sh" <<'SH'
#!/bin/sh
set -eu
HERMES_HOME=${HERMES_HOME:-/opt/data}
export HERMES_HOME
if [ "$(id -u)" != 0 ]; then
  if [ "$(id -u)" != "$(id -u hermes)" ]; then
    echo "[boot] ERROR: started with --user $(id -u): start as root and pass HERMES_UID/HERMES_GID" >&2
    exit 1
  fi
  exec hermes "$@"
fi
valid() { case "$1" in '' | *[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] && [ "$1" -le 65534 ] ;; esac; }
uid=${HERMES_UID:-${PUID:-}}
gid=${HERMES_GID:-${PGID:-}}
if valid "$uid" && [ "$uid" != "$(id -u hermes)" ]; then
  echo "[boot] hermes uid -> $uid"
  usermod -u "$uid" hermes
fi
if valid "$gid" && [ "$gid" != "$(id -g hermes)" ]; then
  echo "[boot] hermes gid -> $gid"
  groupmod -o -g "$gid" hermes
fi
mkdir -p "$HERMES_HOME"
if [ "$(stat -c %u "$HERMES_HOME")" != "$(id -u hermes)" ]; then
  echo "[boot] owning $HERMES_HOME by hermes ($(id -u hermes))"
  chown hermes:hermes "$HERMES_HOME"
  for sub in cron sessions logs hooks memories skills plans workspace home profiles; do
    if [ -e "$HERMES_HOME/$sub" ] && [ ! -L "$HERMES_HOME/$sub" ]; then
      chown -R hermes:hermes "$HERMES_HOME/$sub"
    fi
  done
fi
find "$HERMES_HOME" -maxdepth 1 -type f -exec chown hermes:hermes {} +
if [ -f "$HERMES_HOME/config.yaml" ]; then chmod 640 "$HERMES_HOME/config.yaml"; fi
if [ -f "$HERMES_HOME/.env" ] && ! grep -q '^API_SERVER_KEY=..*' "$HERMES_HOME/.env"; then
  key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  sed -i '/^API_SERVER_KEY=$/d' "$HERMES_HOME/.env"
  printf 'API_SERVER_KEY=%s\n' "$key" >>"$HERMES_HOME/.env"
  echo "[boot] generated API_SERVER_KEY in .env"
fi
if [ -f "$HERMES_HOME/.env" ]; then chmod 600 "$HERMES_HOME/.env"; fi
drop() { setpriv --reuid=hermes --regid=hermes --init-groups env HOME="$HERMES_HOME" "$@"; }
for d in logs sessions memories skills cron workspace; do drop mkdir -p "$HERMES_HOME/$d"; done
if [ -f "$HERMES_HOME/config.yaml" ]; then
  drop /opt/hermes/.venv/bin/python /opt/hermes/config-migrate.py \
    || echo "[boot] warning: config migration failed; continuing"
fi
exec setpriv --reuid=hermes --regid=hermes --init-groups env HOME="$HERMES_HOME" hermes "$@"
SH
cat >"$ctx/config-migrate.py" <<'PY'
"""Boot-time config.yaml migration with hermes-agent's own code (as the official image)."""
import shutil
import sys
from datetime import datetime, timezone

from hermes_cli.config import check_config_version, get_config_path, get_env_path, migrate_config

current, latest = check_config_version()
if current >= latest:
    sys.exit(0)
stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
backups = {}
for path in (get_config_path(), get_env_path()):
    if path.is_file():
        backups[path] = path.with_name(f"{path.name}.bak-{stamp}")
        shutil.copy2(path, backups[path])
print(f"[config-migrate] migrating config schema {current} -> {latest}", flush=True)
try:
    migrate_config(interactive=False, quiet=True)
    after, _ = check_config_version()
    if after < latest:
        raise RuntimeError(f"still at version {after}")
except Exception as e:
    for original, backup in backups.items():
        shutil.copy2(backup, original)
    print(f"[config-migrate] failed, restored the backups: {e}", file=sys.stderr)
    sys.exit(1)
PY
for v in $HERMES_VERSIONS; do
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv ca-certificates git passwd util-linux \\
 && rm -rf /var/lib/apt/lists/*
COPY build-ca.crt /tmp/build-ca.crt
RUN python3 -m venv /opt/hermes/.venv \\
 && PIP_CERT=/tmp/build-ca.crt /opt/hermes/.venv/bin/pip install --no-cache-dir 'hermes-agent[messaging]==$v' \\
 && rm -f /tmp/build-ca.crt && chmod -R a+rX /opt/hermes
RUN groupadd -g 10000 hermes && useradd -u 10000 -g 10000 -d /home/hermes -M -s /bin/sh hermes
ENV PATH=/opt/hermes/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    HERMES_HOME=/opt/data PYTHONUNBUFFERED=1
COPY config-migrate.py /opt/hermes/config-migrate.py
COPY entrypoint.sh /usr/local/bin/hermes-entrypoint
RUN chmod 0644 /opt/hermes/config-migrate.py && chmod 0755 /usr/local/bin/hermes-entrypoint
WORKDIR /opt/data
ENTRYPOINT ["/usr/local/bin/hermes-entrypoint"]
CMD ["gateway", "run"]
DOCKERFILE
  build "$HERMES_REPO:$v-$HERMES_REV" "$OUT/hermes-agent-$v-$HERMES_REV.tar"
done

# ---------------------------------------------------------------- LiteLLM proxy
rm -f "$ctx/entrypoint.sh" "$ctx/config-migrate.py"
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
for v in $HERMES_VERSIONS; do
  printf '  %s  %s\n' "$HERMES_REPO:$v-$HERMES_REV" "$OUT/hermes-agent-$v-$HERMES_REV.tar"
done
printf '  %s  %s\n' "$LITELLM_IMAGE" "$OUT/litellm-$LITELLM_VERSION.tar"

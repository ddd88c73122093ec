#!/usr/bin/env bash
# A "broken release" of the lab's Hermes image, to prove an upgrade's automatic rollback:
# `pvestack-lab/hermes-agent:broken`, built FROM a lab Hermes image that
# scripts/build-lab-images.sh made (default pvestack-lab/hermes-agent:0.19.0-boot2). It loads
# and starts like the others (same user, data dir, labels), but its entrypoint says why
# and exits 1 after a moment, so under `restart: unless-stopped` the container keeps
# restarting and never stays `running`: verify fails, as with a bad upstream release.
# Saved to $PVESTACK_LAB_DIR/images/hermes-agent-broken.tar (what the lab stack file
# points a bumped stack at).
#
#   scripts/build-broken-hermes.sh [SOURCE_IMAGE]
#
# Uses the host's Docker engine when one runs. Otherwise it starts a private dockerd (own
# socket, data root and pid file under $PVESTACK_LAB_DIR/images/.broken-dockerd, no
# iptables, no bridge), so no other build attaches to it, and removes it by its pid after.
set -euo pipefail

LAB_DIR=${PVESTACK_LAB_DIR:-/var/lib/pvestack-lab}
OUT=$LAB_DIR/images
SOURCE=${1:-pvestack-lab/hermes-agent:${HERMES_VERSION:-0.19.0}-${HERMES_REV:-boot2}}
BROKEN=pvestack-lab/hermes-agent:broken
TARBALL=$OUT/hermes-agent-broken.tar
log() { printf '==> %s\n' "$*"; }

started_pid=""
ctx=$(mktemp -d)
priv=$OUT/.broken-dockerd
cleanup() {
  rm -rf "$ctx"
  if [ -n "$started_pid" ] && kill -0 "$started_pid" 2>/dev/null; then
    log "stopping the dockerd this script started (pid $started_pid)"
    kill "$started_pid"
    for _ in $(seq 1 100); do kill -0 "$started_pid" 2>/dev/null || break; sleep 0.2; done
    rm -rf "$priv"
  fi
}
trap cleanup EXIT

mkdir -p "$OUT"
if ! docker info >/dev/null 2>&1; then
  mkdir -p "$priv"
  export DOCKER_HOST=unix://$priv/docker.sock
  log "starting a private dockerd ($priv)"
  dockerd --host "$DOCKER_HOST" --data-root "$priv/data" --exec-root "$priv/exec" \
    --pidfile "$priv/dockerd.pid" --iptables=false --ip-forward=false --bridge=none \
    >"$priv/dockerd.log" 2>&1 &
  started_pid=$!
  for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $priv/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$SOURCE" >/dev/null 2>&1; then
  version=${SOURCE##*:}
  src_tar=$OUT/hermes-agent-$version.tar
  [ -s "$src_tar" ] || { echo "no $SOURCE and no $src_tar: run scripts/build-lab-images.sh" >&2; exit 1; }
  log "docker load $src_tar"
  docker load -i "$src_tar" >/dev/null
fi

cat >"$ctx/broken-entrypoint.sh" <<'SH'
#!/bin/sh
# pvestack lab: a deliberately broken Hermes release (never stays running)
echo "hermes-agent (pvestack lab broken release): refusing to start" >&2
sleep 2
exit 1
SH
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $SOURCE
COPY broken-entrypoint.sh /usr/local/bin/hermes-broken-entrypoint
RUN chmod 0755 /usr/local/bin/hermes-broken-entrypoint
LABEL org.pvestack.lab.broken="1" org.pvestack.lab.broken-from="$SOURCE"
ENTRYPOINT ["/usr/local/bin/hermes-broken-entrypoint"]
DOCKERFILE

log "building $BROKEN from $SOURCE"
DOCKER_BUILDKIT=0 docker build --network none -q -t "$BROKEN" "$ctx" >/dev/null
log "docker save $BROKEN > $TARBALL"
docker save "$BROKEN" -o "$TARBALL.part"
mv "$TARBALL.part" "$TARBALL"
printf '  %s  %s\n' "$BROKEN" "$TARBALL"

#!/usr/bin/env bash
# The README's main command (make demo): bring up the lab, build the lab's images,
# apply the two-stack lab file (LiteLLM gateway + Hermes), verify. Run again: no changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PVESTACK=${PVESTACK:-.venv/bin/pvestack}

echo "==> lab up (a PVE node on real LXC, on this machine)"
"$PVESTACK" lab up >/dev/null
eval "$("$PVESTACK" lab env)"

echo "==> lab images (Hermes and LiteLLM from PyPI, no Docker Hub)"
scripts/build-lab-images.sh

# The demo's secrets: generated once, kept mode 600 beside the lab.
secrets=${PVESTACK_LAB_DIR:-/var/lib/pvestack-lab}/demo-secrets.env
if [ ! -s "$secrets" ]; then
  umask 077
  printf 'LITELLM_MASTER_KEY=sk-%s\n' "$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$secrets"
fi
if ! grep -q '^HERMES_API_KEY=' "$secrets"; then # Hermes's API server (examples/lab.toml)
  printf 'HERMES_API_KEY=hermes-%s\n' "$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$secrets"
fi
set -a
# shellcheck disable=SC1090
. "$secrets"
set +a

echo "==> pvestack plan"
rc=0
"$PVESTACK" plan -c examples/lab.toml --detailed-exitcode || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || exit "$rc"

echo "==> pvestack apply (ends with verify)"
"$PVESTACK" apply -c examples/lab.toml --yes

echo
echo "==> done: the gateway (CT 217) and Hermes (CT 218) are up and verified. Next:"
echo "    eval \"\$($PVESTACK lab env)\"; set -a; . $secrets; set +a"
echo "    $PVESTACK verify -c examples/lab.toml           # the checks again"
echo "    pct exec 218 -- docker exec -u 10000:10000 hermes hermes -z 'Say hello'"
echo "    $PVESTACK destroy -c examples/lab.toml --yes    # the CTs go, the host data stays"
echo "    $PVESTACK lab down"
echo "    make demo                                       # again: No changes, and green"

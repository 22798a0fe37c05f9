#!/usr/bin/env bash
# jsdeps.sh: install what the TypeScript client, the browser app and their
# tests need, idempotently.
#
#   jsdeps.sh          node_modules of clients/js from package-lock.json
#                      (npm ci), when missing or older than the lock file
#   jsdeps.sh browser  also Debian's chromium, when missing (puppeteer-core
#                      drives it; nothing downloads a browser of its own)
#
# Works unattended (CI=true, no stdin). As root it runs apt-get directly;
# otherwise through `sudo -n` when available; failing both it prints what to
# install and exits 1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
log() { printf 'jsdeps: %s\n' "$*" >&2; }

# shellcheck source=apt.sh
source "$root/scripts/apt.sh"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	apt_install nodejs npm
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 20)); then
	log "Node.js $(node --version) is too old: the client and its tests need Node 20 or later"
	exit 1
fi

js="$root/clients/js"
if [[ ! -f $js/node_modules/.package-lock.json || $js/package-lock.json -nt $js/node_modules/.package-lock.json ]]; then
	log "npm ci in clients/js"
	(cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [[ ${1:-} == browser ]] && ! command -v chromium >/dev/null; then
	apt_install chromium
fi
log "ok"

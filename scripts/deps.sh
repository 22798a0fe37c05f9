#!/usr/bin/env bash
# deps.sh: install what the tests and `make cluster` need, idempotently.
#
#   - Debian packages zookeeper (3.8, pulls a Java runtime), redis-server and
#     postgresql (the dev MongoDB's storage), plus default-jre-headless if no
#     `java` is on PATH afterwards;
#   - bin/devmongo, the FerretDB dev server (nested module tools/devmongo).
#
# Safe to run repeatedly and concurrently (flock on /tmp/imgn-testsvc.lock,
# the same lock internal/testsvc.EnsureInstalled takes). Works unattended
# (CI=true, no stdin). As root it runs apt-get directly; otherwise through
# `sudo -n` when available; failing both it prints what to install and exits 1.
#
# Environment:
#   SKIP_APT=1       do not touch Debian packages (only build devmongo)
#   SKIP_DEVMONGO=1  do not build bin/devmongo
#   GO=go            the Go command used to build devmongo
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-go}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'deps: %s\n' "$*" >&2; }

# Serialise with other runs of this script and with testsvc.EnsureInstalled.
lock=/tmp/imgn-testsvc.lock
if [[ ! -e $lock || -w $lock ]]; then
	exec 9>>"$lock"
	chmod 0666 "$lock" 2>/dev/null || true # other users take the lock too
else
	exec 9<"$lock" # created by another user: flock works read-only
fi
flock 9

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
if [[ ${SKIP_APT:-} != 1 ]]; then
	for p in zookeeper redis-server; do
		have_pkg "$p" || missing+=("$p")
	done
	# devmongo runs PostgreSQL from PATH or /usr/lib/postgresql/*/bin.
	if ! command -v postgres >/dev/null && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
		missing+=(postgresql)
	fi
fi

# shellcheck source=apt.sh
source "$root/scripts/apt.sh"

if ((${#missing[@]})); then
	apt_install "${missing[@]}"
fi
if [[ ${SKIP_APT:-} != 1 ]] && ! command -v java >/dev/null; then
	apt_install default-jre-headless
fi

# The Debian packages start system-wide services on install; tests start their
# own instances on free ports, so stop the system ones where we can (no init
# system in containers: ignore failures).
if ((${#missing[@]})); then
	for svc in zookeeper redis-server; do
		if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
			log "note: system service $svc is running (tests do not use it)"
		fi
	done
fi

if [[ ${SKIP_DEVMONGO:-} != 1 ]]; then
	bin="$root/bin/devmongo"
	src="$root/tools/devmongo"
	# Rebuild when missing or older than any of its sources.
	if [[ ! -x $bin ]] || [[ -n $(find "$src" -newer "$bin" \( \( -name '*.go' ! -name '*_test.go' \) -o -name 'go.mod' -o -name 'go.sum' \) -print -quit) ]]; then
		log "building bin/devmongo"
		t0=$SECONDS
		mkdir -p "$root/bin"
		(cd "$src" && "$GO" build -trimpath -o "$bin.tmp" . && mv -f "$bin.tmp" "$bin")
		log "devmongo build took $((SECONDS - t0))s"
	fi
fi
log "ok"

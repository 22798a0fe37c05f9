# apt.sh: apt_install, shared by deps.sh and jsdeps.sh (source it; it
# defines one function and runs nothing).
#
# apt_install PKG...: as root apt-get directly; otherwise through `sudo -n`
# when available; failing both it prints what to install and exits 1.
# Unattended (no stdin, DEBIAN_FRONTEND=noninteractive); logs through the
# caller's log function.
apt_install() {
	local sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo=(sudo -n)
		else
			log "not root and no passwordless sudo; install these packages and rerun:"
			log "  apt-get update && apt-get install -y --no-install-recommends $*"
			exit 1
		fi
	fi
	log "installing: $*"
	local t0=$SECONDS
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
	log "apt-get took $((SECONDS - t0))s"
}

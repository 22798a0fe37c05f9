#!/usr/bin/env bash
# version.sh: print the build stamp of this checkout for -ldflags, one
# KEY=value per line:
#
#   VERSION  the nearest v* tag (git describe), e.g. v0.4.0 or v0.4.0-3-g8a490d2;
#            v0.0.0-<commit> when no tag exists; "-dirty" with uncommitted changes
#   COMMIT   the full commit hash
#   DATE     the commit's time in UTC (RFC 3339), so a rebuild of the same
#            commit stamps the same bytes
#
# Outside a git checkout: VERSION=devel, COMMIT=unknown, DATE empty.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	printf 'VERSION=devel\nCOMMIT=unknown\nDATE=\n'
	exit 0
fi
commit=$(git rev-parse HEAD)
if ! version=$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null); then
	version="v0.0.0-$(git rev-parse --short=12 HEAD)"
	if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
		version+="-dirty"
	fi
fi
date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ)
printf 'VERSION=%s\nCOMMIT=%s\nDATE=%s\n' "$version" "$commit" "$date"

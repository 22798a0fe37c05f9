#!/usr/bin/env bash
# dist.sh: build the release archives into $DIST_DIR (default ./dist):
#
#   imgn-<version>-linux-<arch>.tar.gz   for each arch of $DIST_ARCHS
#                                        (default "amd64 arm64"), holding
#       imgn-<version>-linux-<arch>/
#           bin/imd bin/imrouter bin/imctl   static (CGO_ENABLED=0), stamped
#                                            with scripts/version.sh
#           imd.example.toml imrouter.example.toml   `config example` output
#           systemd/imd.service systemd/imrouter.service
#           LICENSE README.md docs/operations.md docs/protocol.md
#   SHA256SUMS                           sha256sum of every archive
#
# Archives are reproducible for a given commit and Go version: -trimpath,
# no build id, files sorted, owned by 0:0 and dated at the commit time.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-go}
out=${DIST_DIR:-$root/dist}
archs=${DIST_ARCHS:-amd64 arm64}
cmds=(imd imrouter imctl)

eval "$(scripts/version.sh)"
pkg=github.com/imgn/imgn/internal/version
ldflags="-s -w -buildid= -X $pkg.Version=$VERSION -X $pkg.Commit=$COMMIT -X $pkg.Date=$DATE"
mtime=${DATE:-1970-01-01T00:00:00Z}

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The example configs come from the host's build of the same sources.
"$GO" build -o "$work/host/" ./cmd/imd ./cmd/imrouter

archives=()
for arch in $archs; do
	name="imgn-$VERSION-linux-$arch"
	dir="$work/$name"
	mkdir -p "$dir/bin" "$dir/systemd" "$dir/docs"
	echo "dist: building $name" >&2
	for c in "${cmds[@]}"; do
		CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath -ldflags "$ldflags" -o "$dir/bin/$c" "./cmd/$c"
	done
	"$work/host/imd" config example >"$dir/imd.example.toml"
	"$work/host/imrouter" config example >"$dir/imrouter.example.toml"
	cp deploy/systemd/imd.service deploy/systemd/imrouter.service "$dir/systemd/"
	cp LICENSE README.md "$dir/"
	cp docs/operations.md docs/protocol.md "$dir/docs/"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
		-C "$work" -cf - "$name" | gzip -n -9 >"$out/$name.tar.gz"
	archives+=("$name.tar.gz")
done
(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
echo "dist: wrote ${archives[*]} and SHA256SUMS to $out" >&2

// Package web holds the browser chat app that imd serves with --web: the
// files of dist/, built from src/ (TypeScript, on the client library of
// clients/js) and static/ by `make web`, and committed so that `go build`
// needs no Node.js.
package web

import (
	"embed"
	"io/fs"
)

//go:embed dist
var dist embed.FS

// Files returns the app's files, index.html at the root. The result is
// read-only and safe for concurrent use.
func Files() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic("web: embedded dist is missing: " + err.Error()) // cannot happen: go:embed checked it at build time
	}
	return sub
}

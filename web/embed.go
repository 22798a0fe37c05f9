// Package web holds the browser chat app that imd serves with --web: the
// files of static/. index.html and style.css are written by hand; app.js
// is built from src/ (TypeScript, on the client library of clients/js) by
// `make web` and committed, so that `go build` needs no Node.js.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Files returns the app's files, index.html at the root. The result is
// read-only and safe for concurrent use.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic("web: embedded static is missing: " + err.Error()) // cannot happen: go:embed checked it at build time
	}
	return sub
}

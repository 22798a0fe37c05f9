// Package logging builds the structured logger of the imgn daemons (imd,
// imrouter) and names the fields that identify what a log line is about,
// so every component spells them the same way and a log pipeline can
// filter one user's or one connection's lines across components:
//
//	node    the imd node id (every line of imd carries it)
//	user    the user id of a logged-in connection or a request
//	device  the device id of a logged-in connection
//	peer    the node id at the other end of a mesh link
//	addr    a network address (listener, remote end)
//	err     the error
//
// Two formats: "text" (slog's key=value handler, for terminals) and "json"
// (slog's JSON handler, one object per line with "time", "level", "msg"
// and the fields above, for collectors).
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// Field names shared by every component's log lines.
const (
	KeyNode   = "node"
	KeyUser   = "user"
	KeyDevice = "device"
	KeyPeer   = "peer"
	KeyAddr   = "addr"
	KeyErr    = "err"
)

// Formats accepted by New.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in format ("text" or "json") at level
// ("debug", "info", "warn" or "error", any case): the values of the
// daemons' --log-format and --log-level, which its errors name. The
// returned logger is safe for concurrent use; writes to w are serialised
// by the handler.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// ParseLevel parses a level name: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

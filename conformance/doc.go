// Package conformance checks a real imd against docs/protocol.md, the
// protocol's contract, from the outside: it builds and starts imd
// processes, speaks to them over TCP with nothing but the codec package
// (frames and serializers; neither the engine nor the client library), and
// takes what to check from the document itself: the command table of §4.1,
// the error table of §5 and the byte examples of §2.2 are parsed from the
// markdown, every command is run in each serializer, every error code is
// provoked by the input that the document says triggers it, and the tables
// are compared with codec's. Heartbeats and timeouts run with short flag
// values.
//
// The package has only tests; `go test ./conformance/` runs them (part of
// make test, under a minute).
package conformance

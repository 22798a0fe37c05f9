// Package pb holds the Go types of the protocol's bodies, generated from
// imgn.proto (`make proto`). All three serializers encode these types; the
// field names and numbers are part of the wire contract (docs/protocol.md).
package pb

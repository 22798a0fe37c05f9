package client

import (
	"crypto/rand"
	"encoding/hex"
)

// NewClientMsgID returns a fresh idempotency key for Send and SendGroup:
// 16 random bytes from crypto/rand, hex-encoded (32 characters). An
// application that must survive a restart persists the id with the unsent
// message and passes it again with WithClientMsgID.
func NewClientMsgID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go >= 1.24)
	return hex.EncodeToString(b[:])
}

// randomDevice returns a device id "go-" + 12 hex digits.
func randomDevice() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "go-" + hex.EncodeToString(b[:])
}

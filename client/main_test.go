package client

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/imgn/imgn/internal/leaktest"
)

// The WebSocket tests run a real engine (gnet), whose worker pool's
// goroutines outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.Gnet()...) }

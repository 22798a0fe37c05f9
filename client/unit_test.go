package client

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
)

func TestBackoffBounds(t *testing.T) {
	b := backoff{base: 100 * time.Millisecond, max: 5 * time.Second}
	wantCeil := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range wantCeil {
		if got := b.ceiling(i); got != w*time.Millisecond {
			t.Errorf("ceiling(%d) = %s, want %s", i, got, w*time.Millisecond)
		}
	}
	for _, n := range []int{-1, 62, 63, 1000} {
		if got := b.ceiling(n); got < 0 || got > b.max {
			t.Errorf("ceiling(%d) = %s out of [0, max]", n, got)
		}
	}
	for attempt := range 40 {
		for range 200 {
			d := b.delay(attempt)
			if d < 0 || d >= b.ceiling(attempt) {
				t.Fatalf("delay(%d) = %s outside [0, %s)", attempt, d, b.ceiling(attempt))
			}
		}
	}
	// Full jitter: the extremes of rnd map to the extremes of the range.
	lo := backoff{base: time.Second, max: time.Minute, rnd: func() float64 { return 0 }}
	hi := backoff{base: time.Second, max: time.Minute, rnd: func() float64 { return 0.999999 }}
	if lo.delay(3) != 0 || hi.delay(3) < 7990*time.Millisecond {
		t.Errorf("jitter range: lo %s hi %s", lo.delay(3), hi.delay(3))
	}
	if (backoff{}).delay(5) != 0 {
		t.Error("zero backoff must not wait")
	}
	// retry_after is a floor, with at most 10% extra.
	for range 100 {
		d := b.retryDelay(0, 2*time.Second)
		if d < 2*time.Second || d > 2200*time.Millisecond {
			t.Fatalf("retryDelay with hint 2s = %s", d)
		}
	}
	if d := hi.retryDelay(5, time.Millisecond); d < 30*time.Second {
		t.Fatalf("a small hint must not shorten the backoff: %s", d)
	}
}

func TestErrorMapping(t *testing.T) {
	e := errorFromPB(&pb.Error{Code: uint32(codec.CodeRateLimited), Message: "slow down", RetryAfterMs: 250})
	if !e.Retryable || e.Fatal || e.RetryAfter != 250*time.Millisecond {
		t.Fatalf("RATE_LIMITED mapped to %+v", e)
	}
	if got := e.Error(); got != "imgn: RATE_LIMITED (30): slow down" {
		t.Fatalf("Error() = %q", got)
	}
	// Frame fields win for codes unknown to this build.
	u := errorFromPB(&pb.Error{Code: 99, Retryable: true, Fatal: true})
	if !u.Retryable || !u.Fatal || u.Error() != "imgn: CODE_99 (99)" {
		t.Fatalf("unknown code mapped to %+v %q", u, u.Error())
	}
	if errorFromPB(&pb.Error{Code: uint32(codec.CodeUserExists)}).Retryable {
		t.Fatal("USER_EXISTS must not be retryable")
	}
	wrapped := fmt.Errorf("register: %w", errorFromPB(&pb.Error{Code: uint32(codec.CodeUserExists)}))
	if !errors.Is(wrapped, &Error{Code: codec.CodeUserExists}) {
		t.Fatal("errors.Is by code failed")
	}
	if errors.Is(wrapped, &Error{Code: codec.CodeAuthFailed}) || errors.Is(wrapped, ErrKicked) {
		t.Fatal("errors.Is matched a different code")
	}
	var se *Error
	if !errors.As(wrapped, &se) || se.Code != codec.CodeUserExists {
		t.Fatal("errors.As failed")
	}
	k := errorFromKick(&pb.Kick{Code: uint32(codec.CodeKickAdmin), Reason: "bye"})
	if !errors.Is(k, ErrKicked) || !errors.Is(k, &Error{Code: codec.CodeKickAdmin}) || !k.Fatal {
		t.Fatalf("kick error %+v", k)
	}
	cl := &connLostError{cause: errors.New("EOF")}
	if !errors.Is(cl, ErrConnectionLost) || cl.Error() != "client: connection lost: EOF" {
		t.Fatalf("connLostError %q", cl.Error())
	}
}

func TestClientMsgIDUnique(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := make(map[string]bool, 10000)
	for range 10000 {
		id := NewClientMsgID()
		if !re.MatchString(id) {
			t.Fatalf("bad id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	o, err := buildSendOptions([]SendOption{WithClientMsgID("mine"), WithKind(7)})
	if err != nil || o.clientMsgID != "mine" || o.kind != 7 {
		t.Fatalf("options %+v %v", o, err)
	}
	if _, err := buildSendOptions([]SendOption{WithClientMsgID(strings.Repeat("x", 65))}); !errors.Is(err, &Error{Code: codec.CodeInvalidArgument}) {
		t.Fatalf("long id: %v", err)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	c, err := Config{Addr: "127.0.0.1:1", User: "alice", Password: "secret123"}.withDefaults(true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Serializer != codec.Protobuf || c.RequestTimeout != DefaultRequestTimeout || c.ReceiveBuffer != DefaultReceiveBuffer ||
		c.GapGrace != DefaultGapGrace || c.Logger == nil || c.Resolver == nil || c.DialContext == nil {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if !regexp.MustCompile(`^go-[0-9a-f]{12}$`).MatchString(c.Device) {
		t.Fatalf("default device %q", c.Device)
	}
	if addr, node, err := c.Resolver(context.Background(), []string{"x"}); addr != "127.0.0.1:1" || node != "" || err != nil {
		t.Fatalf("default resolver = %q %q %v", addr, node, err)
	}
	c2, _ := Config{Addr: "a:1", User: "alice", Password: "secret123"}.withDefaults(true)
	if c2.Device == c.Device {
		t.Fatal("default devices must differ per Client")
	}

	bad := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no addr", Config{User: "a", Password: "p"}, "Addr"},
		{"no credentials", Config{Addr: "a:1", User: "a"}, "exactly one"},
		{"two credentials", Config{Addr: "a:1", User: "a", Password: "p", Token: "t"}, "exactly one"},
		{"password without user", Config{Addr: "a:1", Password: "p"}, "User is required"},
		{"bad user", Config{Addr: "a:1", User: "a b", Password: "p"}, "User"},
		{"bad device", Config{Addr: "a:1", User: "a", Password: "p", Device: "d/1"}, "Device"},
		{"bad serializer", Config{Addr: "a:1", User: "a", Password: "p", Serializer: 9}, "Serializer"},
		{"negative timeout", Config{Addr: "a:1", User: "a", Password: "p", RequestTimeout: -1}, "RequestTimeout"},
		{"negative buffer", Config{Addr: "a:1", User: "a", Password: "p", ReceiveBuffer: -1}, "ReceiveBuffer"},
		{"max below base", Config{Addr: "a:1", User: "a", Password: "p", ReconnectBase: time.Second, ReconnectMax: time.Millisecond}, "ReconnectMax"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.withDefaults(true)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
	if _, err := (Config{Addr: "a:1", User: "a"}).withDefaults(false); err != nil {
		t.Fatalf("register config needs no credentials check: %v", err)
	}
	if _, err := Dial(context.Background(), Config{}); err == nil {
		t.Fatal("Dial accepted an empty Config")
	}
}

// TestConfigValidateApartFromDefaults: Validate judges the fields as
// given (a zero Device is not a default to it) and WithDefaults fills
// without judging; together they are what Dial applies.
func TestConfigValidateApartFromDefaults(t *testing.T) {
	c := Config{Addr: "a:1", Token: "t"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "Device") {
		t.Fatalf("Validate of a config without defaults: %v", err)
	}
	d := Config{RequestTimeout: -1}.WithDefaults()
	if d.RequestTimeout != -1 || d.Resolver != nil || d.ReceiveBuffer != DefaultReceiveBuffer {
		t.Fatalf("WithDefaults: timeout %v, resolver set %v, buffer %d", d.RequestTimeout, d.Resolver != nil, d.ReceiveBuffer)
	}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "Addr") || !strings.Contains(err.Error(), "RequestTimeout") {
		t.Fatalf("Validate must report every problem: %v", err)
	}
}

package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseOptions(t *testing.T) {
	env := map[string]string{"IM_LISTEN": "127.0.0.1:7000", "IM_JWT_SECRET": "s3", "IM_HEARTBEAT": "10s", "IM_IDLE_TIMEOUT": "40s"}
	o, err := parseOptions([]string{"--store", "memory", "--heartbeat", "5s"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:7000" || o.jwtSecret != "s3" || o.store != "memory" || o.nodeID != "n7000" || o.nodeNum == 0 {
		t.Fatalf("%+v", o)
	}
	if o.heartbeat != 5*time.Second || o.idle != 40*time.Second {
		t.Fatalf("flag must beat env: heartbeat %s idle %s", o.heartbeat, o.idle)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--store", "rocks"}, nil, "--store"},
		{[]string{"--retention", "-1h"}, nil, "--retention"},
		{[]string{"--inbox-max", "-5"}, nil, "--inbox-max"},
		{[]string{"--store", "memory", "--inbox-max", "5"}, nil, "--store embedded"},
		{[]string{"--node-num", "5000"}, nil, "--node-num"},
		{[]string{"--listen", "nonsense"}, nil, "--listen"},
		{nil, map[string]string{"IM_MAX_CONNS": "lots"}, "IM_MAX_CONNS"},
		{[]string{"extra"}, nil, "unexpected"},
	} {
		_, err := parseOptions(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: err %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
	if code := run([]string{"--store", "bogus"}, func(string) string { return "" }, io.Discard); code != 2 {
		t.Fatalf("exit code %d for bad flags", code)
	}
	if code := run([]string{"--help"}, func(string) string { return "" }, io.Discard); code != 0 {
		t.Fatalf("exit code %d for --help", code)
	}
}

package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestFormats(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, FormatJSON, "INFO")
	if err != nil {
		t.Fatal(err)
	}
	log.With(KeyNode, "n1").Info("login", KeyUser, "alice", KeyDevice, "phone", KeyErr, errors.New("boom"))
	log.Debug("hidden at info")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON object: %q: %v", buf.String(), err)
	}
	if line["msg"] != "login" || line["level"] != "INFO" || line["node"] != "n1" || line["user"] != "alice" ||
		line["device"] != "phone" || line["err"] != "boom" || line["time"] == nil {
		t.Fatalf("fields: %v", line)
	}

	buf.Reset()
	log, err = New(&buf, FormatText, "debug")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("shown", KeyPeer, "n2")
	if !strings.Contains(buf.String(), "level=DEBUG msg=shown peer=n2") {
		t.Fatalf("text: %q", buf.String())
	}

	if _, err := New(&buf, "xml", "info"); err == nil || !strings.Contains(err.Error(), "want text or json") {
		t.Fatalf("bad format: %v", err)
	}
	if _, err := New(&buf, FormatText, "loud"); err == nil || !strings.Contains(err.Error(), "want debug, info, warn or error") {
		t.Fatalf("bad level: %v", err)
	}
}

package testsvc

import (
	"os"
	"path/filepath"
	"testing"
)

// TestLastStartSaysAddrInUse: only the latest start's part of the log
// counts, whatever the kind's wording of the bind failure.
func TestLastStartSaysAddrInUse(t *testing.T) {
	s := &Service{LogPath: filepath.Join(t.TempDir(), "x.log")}
	if s.lastStartSaysAddrInUse() {
		t.Fatal("no log: reported in use")
	}
	for _, tc := range []struct {
		log  string
		want bool
	}{
		{startMarker + "a start\njava.net.BindException: Address already in use\n", true},
		{startMarker + "a start\n# Could not create server TCP listening socket 127.0.0.1:1: bind: Address already in use\n", true},
		{startMarker + "a start\nlisten tcp 127.0.0.1:1: bind: address already in use\n", true},
		{startMarker + "a start\nAddress already in use\n" + startMarker + "b start\nready\n", false},
		{startMarker + "a start\nsome other failure\n", false},
	} {
		if err := os.WriteFile(s.LogPath, []byte(tc.log), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := s.lastStartSaysAddrInUse(); got != tc.want {
			t.Errorf("log %q: got %v, want %v", tc.log, got, tc.want)
		}
	}
}

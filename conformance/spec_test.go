package conformance

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/internal/testsvc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/imgn/imgn/codec/pb" // registers the imgn.v1 messages
)

// spec returns the lines of the section of docs/protocol.md whose heading
// starts with heading ("## 5." or "### 4.1"), up to the next heading of the
// same or a higher level.
func spec(t *testing.T, heading string) []string {
	t.Helper()
	root, err := testsvc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	level := strings.Index(heading, " ")
	var out []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if in && strings.HasPrefix(line, "#") {
			if l := strings.Index(line, " "); l > 0 && l <= level && strings.Trim(line[:l], "#") == "" {
				break
			}
		}
		if strings.HasPrefix(line, heading) {
			in = true
		}
		if in {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		t.Fatalf("docs/protocol.md has no section %q", heading)
	}
	return out
}

// table returns the rows of the first markdown table in lines: cells
// trimmed and unquoted from backticks, header and separator rows left out.
func table(t *testing.T, lines []string) [][]string {
	t.Helper()
	var rows [][]string
	started := false
	for _, line := range lines {
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		if !started {
			started = true // the header row
			continue
		}
		if strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i, c := range cells {
			cells[i] = strings.Trim(strings.TrimSpace(c), "`")
		}
		rows = append(rows, cells)
	}
	if len(rows) == 0 {
		t.Fatal("no table in the section")
	}
	return rows
}

// hexBlocks returns the byte strings written in hex in the code blocks of
// lines. A block holds one byte string, or several each introduced by a
// label line; annotations after a '|' and hexdump offsets are skipped.
func hexBlocks(lines []string) [][]byte {
	var out [][]byte
	var cur []byte
	inBlock := false
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur = nil
	}
	pair := regexp.MustCompile(`^[0-9A-Fa-f]{2}$`)
	for _, line := range lines {
		if strings.HasPrefix(line, "```") {
			flush()
			inBlock = !inBlock
			continue
		}
		if !inBlock {
			continue
		}
		if i := strings.Index(line, "|"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) > 0 && len(fields[0]) == 8 {
			if _, err := hex.DecodeString(fields[0]); err == nil {
				fields = fields[1:] // hexdump offset
			}
		}
		if len(fields) == 0 {
			continue
		}
		allHex := true
		for _, f := range fields {
			allHex = allHex && pair.MatchString(f)
		}
		if !allHex {
			flush() // a label: a new byte string follows
			continue
		}
		for _, f := range fields {
			b, _ := hex.DecodeString(f)
			cur = append(cur, b...)
		}
	}
	flush()
	return out
}

func yesNo(t *testing.T, s string) bool {
	t.Helper()
	switch s {
	case "yes":
		return true
	case "no":
		return false
	}
	t.Fatalf("want yes or no, got %q", s)
	return false
}

// specCode is one row of the §5 table.
type specCode struct {
	code             codec.ErrorCode
	name             string
	fatal, retryable bool
	meaning          string
}

// errorTable parses the §5 table.
func errorTable(t *testing.T) []specCode {
	t.Helper()
	var out []specCode
	for _, r := range table(t, spec(t, "## 5.")) {
		if len(r) != 5 {
			t.Fatalf("§5 row %q: want 5 cells", r)
		}
		n, err := strconv.ParseUint(r[0], 10, 32)
		if err != nil {
			t.Fatalf("§5 row %q: code %v", r, err)
		}
		out = append(out, specCode{codec.ErrorCode(n), r[1], yesNo(t, r[2]), yesNo(t, r[3]), r[4]})
	}
	return out
}

// specCommand is one row of the §4.1 table with a single code.
type specCommand struct {
	code      codec.Command
	name      string
	direction string // "C→S", "S→C" or "S→C, seq 0"
	body      string // message name in imgn.proto
	reply     string // the reply cell as written
}

// commandTable parses the §4.1 table (the mesh range row left out).
func commandTable(t *testing.T) []specCommand {
	t.Helper()
	var out []specCommand
	for _, r := range table(t, spec(t, "### 4.1")) {
		if len(r) != 5 {
			t.Fatalf("§4.1 row %q: want 5 cells", r)
		}
		if strings.Contains(r[0], "–") {
			continue // the mesh range
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(r[0], "0x"), 16, 8)
		if err != nil {
			t.Fatalf("§4.1 row %q: code %v", r, err)
		}
		out = append(out, specCommand{codec.Command(n), r[1], r[2], r[3], r[4]})
	}
	return out
}

// commandByName is the codec command whose upper-case name is name.
func commandByName(t *testing.T, name string) codec.Command {
	t.Helper()
	for c := range 256 {
		if cmd := codec.Command(c); cmd.Known() && strings.ToUpper(cmd.String()) == name {
			return cmd
		}
	}
	t.Fatalf("no command named %s in codec", name)
	return 0
}

// TestErrorTableIsCodecs: §5 and codec.Codes are the same table, row for
// row (code, name, fatal, retryable, meaning), so neither can drift.
func TestErrorTableIsCodecs(t *testing.T) {
	doc := errorTable(t)
	if len(doc) != len(codec.Codes) {
		t.Fatalf("§5 has %d codes, codec.Codes %d", len(doc), len(codec.Codes))
	}
	for i, d := range doc {
		c := codec.Codes[i]
		if d.code != c.Code || d.name != c.Name || d.fatal != c.Fatal || d.retryable != c.Retryable || d.meaning != c.Meaning {
			t.Errorf("§5 row %d: %+v\ncodec.Codes:  %+v", i, d, c)
		}
	}
}

// TestCommandTableIsCodecs: every §4.1 command has codec's code and name
// and names a message of imgn.proto, and every command codec knows is in
// the table.
func TestCommandTableIsCodecs(t *testing.T) {
	inTable := map[codec.Command]bool{}
	for _, r := range commandTable(t) {
		inTable[r.code] = true
		if got := strings.ToUpper(r.code.String()); got != r.name {
			t.Errorf("§4.1: %#x is %s in the document, %s in codec", uint8(r.code), r.name, got)
		}
		if _, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName("imgn.v1." + r.body)); err != nil {
			t.Errorf("§4.1: %s's body %s is not a message of imgn.proto: %v", r.name, r.body, err)
		}
	}
	for c := range 256 {
		if cmd := codec.Command(c); cmd.Known() && !inTable[cmd] {
			t.Errorf("codec command %s (%#x) is not in §4.1", cmd, c)
		}
	}
}

// TestSerializerTableIsCodecs: the ids of §3 are codec's.
func TestSerializerTableIsCodecs(t *testing.T) {
	rows := table(t, spec(t, "## 3."))
	if len(rows) != len(serializers) {
		t.Fatalf("§3 lists %d serializers", len(rows))
	}
	for _, r := range rows {
		id, err := strconv.Atoi(r[0])
		if err != nil {
			t.Fatal(err)
		}
		got, err := codec.ParseSerializer(strings.ToLower(r[1]))
		if err != nil || got != codec.SerializerID(id) {
			t.Errorf("§3: %s is %d in the document, %v (%v) in codec", r[1], id, got, err)
		}
	}
}

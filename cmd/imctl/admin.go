package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// adminTarget is where admin commands go: the node's admin API base URL
// and the bearer token it requires (imd --admin-token), if any.
type adminTarget struct{ base, token string }

// admin adds --admin and --admin-token.
func (f *flags) admin() *adminTarget {
	a := &adminTarget{}
	f.envString(&a.base, "admin", "IM_ADMIN", "http://127.0.0.1:9091", "admin API base URL")
	f.envString(&a.token, "admin-token", "IM_ADMIN_TOKEN", "", "bearer token of the admin API (imd --admin-token)")
	return a
}

// adminCall performs one admin API request and decodes the JSON answer
// into out (numbers as json.Number, so 64-bit ids stay exact). A non-2xx
// status is an error carrying the status and the response text.
func adminCall(ctx context.Context, e *env, a *adminTarget, method, path string, query url.Values, body any, out *map[string]any) error {
	base := a.base
	u, err := url.Parse(strings.TrimRight(base, "/") + path)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("--admin %q: want an http(s) URL such as http://127.0.0.1:9091", base)
	}
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("admin request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("admin %s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &adminError{method: method, path: path, status: resp.StatusCode, statusText: resp.Status, body: data}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("admin %s %s: undecodable response %q: %w", method, path, truncate(string(data), 200), err)
	}
	return nil
}

// adminError is a non-2xx answer of the admin API.
type adminError struct {
	method, path, statusText string
	status                   int
	body                     []byte
}

// Error shows the server's explanation (see message).
func (a *adminError) Error() string {
	return fmt.Sprintf("admin %s %s: %s: %s", a.method, a.path, a.statusText, truncate(a.message(), 200))
}

// message is the "error" text when the body is the API's JSON error
// object, else the body as is.
func (a *adminError) message() string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(a.body, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(a.body))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// str renders a JSON value for human output.
func str(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case json.Number:
		return x.String()
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = str(p)
		}
		return strings.Join(parts, ", ")
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

// adminOutput prints the answer: as received with --json, else human.
// perNode formats the per-node counts of a cluster-wide admin answer
// (" (n1 2, n2 3); n3 not reached: ..."), or "" when it has none.
func perNode(resp map[string]any) string {
	var b strings.Builder
	if nodes, ok := resp["nodes"].(map[string]any); ok && len(nodes) > 0 {
		ids := slices.Sorted(maps.Keys(nodes))
		b.WriteString(" (")
		for i, id := range ids {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %s", id, str(nodes[id]))
		}
		b.WriteString(")")
	}
	if failed, ok := resp["failed"].(map[string]any); ok {
		for _, id := range slices.Sorted(maps.Keys(failed)) {
			fmt.Fprintf(&b, "; %s not reached: %s", id, str(failed[id]))
		}
	}
	return b.String()
}

func adminOutput(e *env, f *flags, resp map[string]any, human string) {
	if f.json {
		writeJSON(e.stdout, resp)
		return
	}
	fmt.Fprintln(e.stdout, human)
}

func cmdOnline(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "online", "--user U")
	base := f.admin()
	user := f.String("user", "", "user id")
	if err := f.parse(args); err != nil {
		return err
	}
	if *user == "" && f.NArg() == 1 {
		*user = f.Arg(0)
	} else if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *user == "" {
		return usagef("--user is required")
	}
	var resp map[string]any
	if err := adminCall(ctx, e, base, http.MethodGet, "/admin/online", url.Values{"user": {*user}}, nil, &resp); err != nil {
		var ae *adminError
		if errors.As(err, &ae) && ae.status == http.StatusNotFound && ae.message() == "no such user" {
			return fmt.Errorf("no such user: %s", *user)
		}
		return err
	}
	human := *user + " offline"
	if online, _ := resp["online"].(bool); online {
		human = fmt.Sprintf("%s online (%s)", *user, str(resp["devices"]))
	}
	adminOutput(e, f, resp, human)
	return nil
}

func cmdKick(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "kick", "--user U [--device D]")
	base := f.admin()
	user := f.String("user", "", "user id")
	device := f.String("device", "", "only this device (default: every session of the user)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if *user == "" {
		return usagef("--user is required")
	}
	q := url.Values{"user": {*user}}
	if *device != "" {
		q.Set("device", *device)
	}
	var resp map[string]any
	if err := adminCall(ctx, e, base, http.MethodPost, "/admin/kick", q, nil, &resp); err != nil {
		return err
	}
	adminOutput(e, f, resp, fmt.Sprintf("kicked %s session(s) of %s%s", str(resp["kicked"]), *user, perNode(resp)))
	return nil
}

func cmdBroadcast(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "broadcast", "--text T")
	base := f.admin()
	text := f.String("text", "", "notice text (default: the remaining arguments)")
	if err := f.parse(args); err != nil {
		return err
	}
	if *text == "" {
		*text = strings.Join(f.Args(), " ")
	} else if f.NArg() > 0 {
		return usagef("give the text with --text or as arguments, not both")
	}
	if *text == "" {
		return usagef("--text is required")
	}
	var resp map[string]any
	if err := adminCall(ctx, e, base, http.MethodPost, "/admin/broadcast", nil, map[string]string{"text": *text}, &resp); err != nil {
		return err
	}
	adminOutput(e, f, resp, fmt.Sprintf("notice delivered to %s connection(s)%s", str(resp["delivered"]), perNode(resp)))
	return nil
}

func cmdSysmsg(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "sysmsg", "--to U --text T")
	base := f.admin()
	to := f.String("to", "", "recipient user id")
	text := f.String("text", "", "message text (default: the remaining arguments)")
	if err := f.parse(args); err != nil {
		return err
	}
	if *text == "" {
		*text = strings.Join(f.Args(), " ")
	} else if f.NArg() > 0 {
		return usagef("give the text with --text or as arguments, not both")
	}
	if *to == "" || *text == "" {
		return usagef("--to and --text are required")
	}
	var resp map[string]any
	if err := adminCall(ctx, e, base, http.MethodPost, "/admin/message", nil, map[string]string{"to": *to, "text": *text}, &resp); err != nil {
		return err
	}
	adminOutput(e, f, resp, fmt.Sprintf("stored msg_id=%s seq=%s in %s's inbox", str(resp["msg_id"]), str(resp["seq"]), *to))
	return nil
}

package console

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/stuck"
)

// listLimit bounds the stuck rows one page shows; a longer list says so.
const listLimit = 200

// previewLimit bounds the payload bytes a row's page shows.
const previewLimit = 4096

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"age": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return time.Since(t).Round(time.Second).String()
	},
	"bytes": displayBytes,
	"list":  func(s ...string) []string { return s },
	"ids": func(ids []int64) string {
		parts := make([]string, 0, len(ids))
		for i, id := range ids {
			if i == 20 {
				parts = append(parts, fmt.Sprintf("… (%d in all)", len(ids)))
				break
			}
			parts = append(parts, strconv.FormatInt(id, 10))
		}
		return strings.Join(parts, " ")
	},
}

// displayBytes shows a key as text when it is printable UTF-8, else as hex.
func displayBytes(b []byte) string {
	switch {
	case b == nil:
		return "(null)"
	case printable(b):
		return string(b)
	default:
		return fmt.Sprintf("0x%x", b)
	}
}

func printable(b []byte) bool {
	return utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool {
		return (r < ' ' && r != '\n' && r != '\t' && r != '\r') || r == 0x7f
	})
}

// preview is a payload as a row's page shows it: text, or a hex dump for
// binary, capped at previewLimit bytes.
type preview struct {
	Size      int
	Tombstone bool
	Binary    bool
	Text      string
	Cut       bool
}

func payloadPreview(b []byte) preview {
	p := preview{Size: len(b), Tombstone: b == nil}
	if len(b) > previewLimit {
		b, p.Cut = b[:previewLimit], true
	}
	t := b
	for i := 0; p.Cut && i < 3 && !utf8.Valid(t); i++ {
		t = t[:len(t)-1] // the cut split a character
	}
	if printable(t) {
		p.Text = string(t)
		return p
	}
	p.Binary = true
	var sb strings.Builder
	for off := 0; off < len(b); off += 16 {
		line := b[off:min(off+16, len(b))]
		fmt.Fprintf(&sb, "%08x  % x\n", off, line)
	}
	p.Text = sb.String()
	return p
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ov, err := readOverview(ctx, c.cfg.Pool)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	audit, err := stuck.RecentAudit(ctx, c.cfg.Pool, 10)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var peak int64
	for _, m := range ov.PerMinute {
		peak = max(peak, m.Count)
	}
	data := map[string]any{"O": ov, "Audit": audit, "Chart": chart(ov.PerMinute), "Peak": peak}
	if c.cfg.LastVerify != nil {
		if v, ok := c.cfg.LastVerify(); ok {
			data["Verify"] = v
		}
	}
	c.render(w, r, http.StatusOK, "overview", data)
}

// filterOf reads the stuck-row filter of a query string or form.
func filterOf(get func(string) string) (stuck.Filter, error) {
	f := stuck.Filter{Topic: strings.TrimSpace(get("topic")), ErrorKind: get("kind")}
	if k := get("key"); k != "" {
		f.Key = []byte(k)
	}
	if f.ErrorKind != "" && !pgstore.ValidErrorKind(f.ErrorKind) {
		return f, fmt.Errorf("unknown error kind %q", f.ErrorKind)
	}
	return f, nil
}

func (c *Console) stuckList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := filterOf(q.Get)
	if err != nil {
		c.render(w, r, http.StatusBadRequest, "message", map[string]any{"Title": "Bad filter", "Text": err.Error()})
		return
	}
	f.Limit = listLimit
	rows, err := stuck.List(r.Context(), c.cfg.Pool, f)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	total := len(rows)
	if total == listLimit {
		if total, err = stuck.Count(r.Context(), c.cfg.Pool, f); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	c.render(w, r, http.StatusOK, "stuck", map[string]any{
		"Rows": rows, "Total": total, "Cut": total > len(rows),
		"Topic": q.Get("topic"), "Key": q.Get("key"), "Kind": q.Get("kind"),
		"Filtered": q.Get("topic") != "" || q.Get("key") != "" || q.Get("kind") != "",
	})
}

func (c *Console) stuckDetail(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	row, err := stuck.Get(r.Context(), c.cfg.Pool, id)
	if errors.Is(err, stuck.ErrNotFound) {
		c.render(w, r, http.StatusNotFound, "message", map[string]any{"Title": "No such row",
			"Text": fmt.Sprintf("Row %d is not in stuck_messages: it was requeued or discarded, or never stuck.", id)})
		return
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	behind, err := stuck.BlockedBehind(r.Context(), c.cfg.Pool, id, 50)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var headers map[string]string
	_ = json.Unmarshal(row.Headers, &headers)
	c.render(w, r, http.StatusOK, "row", map[string]any{
		"Row": row, "Headers": headers, "RawHeaders": string(row.Headers), "Payload": payloadPreview(row.Payload), "Behind": behind,
	})
}

// act is every POST on stuck rows: /stuck/{id}/{action} for one row,
// /stuck/{action} for every row matching the form's filter. Without
// confirm=yes it shows what it would do and asks; with it, it acts.
func (c *Console) act(w http.ResponseWriter, r *http.Request) {
	s := c.session(r)
	switch {
	case c.key == nil:
		c.refuse(w, r, "This console is read-only: RELAY_ADMIN_TOKEN is not set.")
		return
	case s == nil:
		c.refuse(w, r, "Sign in with the admin token to requeue or discard.")
		return
	case !sameOrigin(r) || !hmacEqual(r.PostFormValue("csrf"), s.CSRF):
		c.refuse(w, r, "The request did not come from this console (CSRF check failed); reload the page and try again.")
		return
	}
	action := r.PathValue("action")
	if action != "requeue" && action != "discard" {
		http.NotFound(w, r)
		return
	}
	ctx := r.Context()
	tx, err := c.cfg.Pool.Begin(ctx)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	defer func() { _ = tx.Rollback(ctx) }()

	var rows []stuck.Match
	detail := ""
	var f stuck.Filter
	if idText := r.PathValue("id"); idText != "" {
		id, err := strconv.ParseInt(idText, 10, 64)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if rows, err = stuck.ByID(ctx, tx, []int64{id}); err != nil {
			c.fail(w, r, err)
			return
		}
		if len(rows) == 0 {
			c.render(w, r, http.StatusNotFound, "message", map[string]any{"Title": "No such row",
				"Text": fmt.Sprintf("Row %d is not in stuck_messages (any more); nothing done.", id)})
			return
		}
	} else {
		if f, err = filterOf(r.PostFormValue); err != nil {
			c.render(w, r, http.StatusBadRequest, "message", map[string]any{"Title": "Bad filter", "Text": err.Error()})
			return
		}
		if rows, err = stuck.Matching(ctx, tx, f); err != nil {
			c.fail(w, r, err)
			return
		}
		detail = describe(f)
	}
	ids := make([]int64, len(rows))
	fatal := 0
	for i, row := range rows {
		ids[i] = row.ID
		if row.ErrorKind == pgstore.ErrorKindRowFatal {
			fatal++
		}
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, http.StatusOK, "confirm", map[string]any{
			"Action": action, "Rows": rows, "Fatal": fatal, "Path": r.URL.Path,
			"Topic": f.Topic, "Key": string(f.Key), "Kind": f.ErrorKind, "Detail": detail,
		})
		return
	}
	var done []int64
	if action == "requeue" {
		done, err = stuck.Requeue(ctx, tx, ids, "")
	} else {
		done, err = stuck.Discard(ctx, tx, ids, s.Name, reason)
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if len(done) != len(ids) {
		c.render(w, r, http.StatusConflict, "message", map[string]any{"Title": "Nothing done",
			"Text": fmt.Sprintf("%d of the %d rows changed meanwhile (another operator?); nothing done. Look again.", len(ids)-len(done), len(ids))})
		return
	}
	if reason != "" {
		detail = strings.TrimPrefix(detail+"; reason: "+reason, "; ")
	}
	if err := stuck.Audit(ctx, tx, stuck.AuditEntry{Operator: s.Name, Source: stuck.SourceConsole, Action: action, IDs: done, Detail: detail}); err != nil {
		c.fail(w, r, err)
		return
	}
	if err := tx.Commit(ctx); err != nil {
		c.fail(w, r, err)
		return
	}
	c.log.Info("console_action", "operator", s.Name, "action", action, "rows", len(done), "filter", detail)
	past := map[string]string{"requeue": "Requeued", "discard": "Discarded"}[action]
	c.render(w, r, http.StatusOK, "done", map[string]any{"Title": fmt.Sprintf("%s %d row(s)", past, len(done)), "IDs": done, "Action": action, "Fatal": fatal})
}

// hmacEqual compares a CSRF token from a form with the session's in
// constant time; an empty one never matches.
func hmacEqual(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// describe renders a filter for the audit log.
func describe(f stuck.Filter) string {
	var parts []string
	if f.Topic != "" {
		parts = append(parts, "topic="+strconv.Quote(f.Topic))
	}
	if f.Key != nil {
		parts = append(parts, "key="+strconv.Quote(string(f.Key)))
	}
	if f.ErrorKind != "" {
		parts = append(parts, "error_kind="+f.ErrorKind)
	}
	if len(parts) == 0 {
		return "all stuck rows"
	}
	return strings.Join(parts, " ")
}

package console_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/internal/console"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

const token = "console-test-token-0123456789"

// updateScreenshot rewrites docs/console.png from the overview the test
// signs in to: go test ./internal/console -run TestConsoleInChromium -update-screenshot.
// Without it the test leaves the checkout as it was.
var updateScreenshot = flag.Bool("update-screenshot", false, "rewrite docs/console.png")

// browser starts a headless Chromium (Debian's chromium package) with a
// fresh profile, closed when the test ends.
func browser(t *testing.T) context.Context {
	t.Helper()
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s: %v; install it: apt-get install -y chromium (.ci/run does)", chromium, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	// The first call starts the browser, which lives as long as its
	// context: no timeout on that one; the steps get theirs.
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	steps, cancelSteps := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() {
		cancelSteps()
		cancelCtx()
		cancelAlloc()
	})
	return steps
}

// A stuck row is viewed, refused without the token, then requeued by a
// signed-in operator in a real Chromium, and the running relay delivers it
// and the row it held back; a <script> payload shows as text.
func TestConsoleInChromium(t *testing.T) {
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders", "payments")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	const payload = `<script>document.title="pwned"</script><b>bold?</b>`
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts, first_error, last_error, error_kind)
		VALUES (107, 'orders', 'customer-42', $1, '{"type":"<img src=x onerror=alert(1)>"}', now(), 10,
		        'NOT_ENOUGH_REPLICAS', 'NOT_ENOUGH_REPLICAS: <i>not enough</i>', 'row_retriable')`, []byte(payload)); err != nil {
		t.Fatal(err)
	}
	// The row behind it: a later id of the same key (ids given explicitly,
	// as the stuck row's id was).
	const behind = 108
	if _, err := db.Pool.Exec(ctx, `INSERT INTO messages (id, topic, key, payload) OVERRIDING SYSTEM VALUE VALUES (108, 'orders', 'customer-42', 'next')`); err != nil {
		t.Fatal(err)
	}
	var others []relaytest.Message
	for i := range 12 {
		others = append(others, relaytest.Message{Topic: "payments", Key: []byte(fmt.Sprintf("p-%d", i%4)), Payload: []byte("{}")})
	}
	db.Insert(t, others...)
	relaytest.RunRelay(t, relay.New(relay.Config{Schema: db.Schema, PollInterval: 50 * time.Millisecond}, db.Pool,
		relaytest.NewProducer(t, brokers), slog.New(slog.DiscardHandler)))

	c, err := console.New(console.Config{Pool: db.Pool, AdminToken: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)
	b := browser(t)
	stuck := func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM stuck_messages WHERE id = 107`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	count := func(sel string) int {
		t.Helper()
		n, err := chromedp.Run(b, chromedp.Evaluate[int](`document.querySelectorAll(`+strconv.Quote(sel)+`).length`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	stuckCount := func() int {
		t.Helper()
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM stuck_messages`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(b, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			html, _ := chromedp.Run(b, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
			t.Fatalf("read %s: %v; the page:\n%s", sel, err, html)
		}
		return v
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(b, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// post submits, from the current page, a form that asks to requeue row
	// 107 at once (confirm=yes) without the console's CSRF token, and returns
	// the heading of the answer. (The console's Content-Security-Policy
	// forbids fetch from its pages; a plain form is what a forged request
	// would be.)
	post := func() string {
		t.Helper()
		do("post a form without the CSRF token",
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				_, err := chromedp.Evaluate[int](`(() => {
				const f = document.createElement("form");
				f.method = "POST"; f.action = "/stuck/107/requeue";
				const i = document.createElement("input");
				i.type = "hidden"; i.name = "confirm"; i.value = "yes";
				f.appendChild(i); document.body.appendChild(f); f.submit();
				return 1;
			})()`)(ctx, tg)
				return err
			}),
			chromedp.WaitVisible(chromedp.CSS(`#result`)),
		)
		return text(`#result`) + ": " + text(`#message`)
	}

	// Read-only: the row, its escaped payload and headers, the row behind it.
	do("view the stuck row",
		chromedp.Navigate(srv.URL+"/stuck?topic=orders"),
		chromedp.WaitVisible(chromedp.CSS(`#stuck-rows`)),
		chromedp.Click(chromedp.CSS(`#stuck-rows a[href="/stuck/107"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#payload`)),
	)
	title, err := chromedp.Run(b, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	if shown := text(`#payload`); title == "pwned" || shown != payload {
		t.Errorf("payload: title %q, shown %q; want the <script> shown as text, not run", title, shown)
	}
	injected, err := chromedp.Run(b, chromedp.Evaluate[int](`document.querySelectorAll("#requeue, main script, #headers img, #last-error i").length`))
	if err != nil {
		t.Fatal(err)
	}
	if headers := text(`#headers`); !strings.Contains(headers, `<img src=x onerror=alert(1)>`) || injected != 0 {
		t.Errorf("headers %q, %d requeue buttons or injected elements; want the header value as text and no action without a session", headers, injected)
	}
	if behindText, noActions := text(`#behind`), text(`#no-actions`); !strings.Contains(behindText, "108") || !strings.Contains(noActions, "Sign in") {
		t.Errorf("rows behind: %q; actions: %q", behindText, noActions)
	}

	// The same action without the token is refused.
	if answer := post(); !strings.HasPrefix(answer, "Refused: Sign in with the admin token") || stuck() != 1 {
		t.Fatalf("requeue without a session: %q, row still stuck: %v; want a refusal and nothing done", answer, stuck() == 1)
	}

	// A wrong token does not sign in.
	do("sign in with a wrong token",
		chromedp.Navigate(srv.URL+"/login"),
		chromedp.SendKeys(chromedp.CSS(`#name`), "mallory"),
		chromedp.SendKeys(chromedp.CSS(`#token`), "not-the-token-at-all"),
		chromedp.Click(chromedp.CSS(`#login`)),
		chromedp.WaitVisible(chromedp.CSS(`#login-failed`)),
	)

	relaytest.WaitFor(t, 30*time.Second, "the payments rows sent", func() bool { return db.Count(t, "sent") == 12 })

	// Sign in; the overview shows the stuck row and the row behind it.
	do("sign in",
		chromedp.Navigate(srv.URL+"/login"),
		chromedp.SendKeys(chromedp.CSS(`#name`), "dana"),
		chromedp.SendKeys(chromedp.CSS(`#token`), token),
		chromedp.Click(chromedp.CSS(`#login`)),
		chromedp.WaitVisible(chromedp.CSS(`#operator`)),
	)
	if operator, stuckTile, blockedTile := text(`#operator`), text(`#stuck`), text(`#blocked`); operator != "dana" || stuckTile != "1" || blockedTile != "1" {
		t.Errorf("overview: operator %q, stuck %q, held back %q; want dana, 1, 1", operator, stuckTile, blockedTile)
	}
	shot, err := chromedp.Run(b, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if cfg, err := png.DecodeConfig(bytes.NewReader(shot)); err != nil || cfg.Width == 0 || cfg.Height == 0 {
		t.Errorf("screenshot: not a PNG image (%v)", err)
	}
	if *updateScreenshot {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "console.png"), shot, 0o644); err != nil {
			t.Errorf("save the screenshot: %v", err)
		}
	}

	// Signed in, a POST without the CSRF token is still refused.
	if answer := post(); !strings.HasPrefix(answer, "Refused: The request did not come from this console") || stuck() != 1 {
		t.Fatalf("requeue without the CSRF token: %q; want a refusal and nothing done", answer)
	}

	// Requeue it: confirm, then see it delivered before the row it held back.
	// It failed retriably, so the confirmation has no row_fatal warning.
	do("requeue",
		chromedp.Navigate(srv.URL+"/stuck/107"),
		chromedp.Click(chromedp.CSS(`#requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
	)
	if n := count(`#fatal-warning`); n != 0 {
		t.Errorf("requeue of a row_retriable row: %d row_fatal warnings on the confirmation, want none", n)
	}
	do("confirm the requeue",
		chromedp.Click(chromedp.CSS(`#confirm`)),
		chromedp.WaitVisible(chromedp.CSS(`#result`)),
	)
	if result := text(`#result`); result != "Requeued 1 row(s)" {
		t.Fatalf("requeue: %q", result)
	}
	recs := relaytest.Consume(t, brokers, 2, 30*time.Second, "orders")
	var got []int64
	for _, r := range recs {
		id, _ := relaytest.OutboxID(r)
		got = append(got, id)
	}
	if fmt.Sprint(got) != fmt.Sprint([]int64{107, behind}) || string(recs[0].Value) != payload {
		t.Errorf("delivered %v, want [107 %d]: the requeued row first, with its payload", got, behind)
	}
	var who, action string
	if err := db.Pool.QueryRow(ctx, `SELECT operator, action FROM audit_log WHERE source = 'console' AND row_ids = '{107}'`).Scan(&who, &action); err != nil ||
		!strings.HasSuffix(who, "(dana)") || action != "requeue" {
		t.Errorf("audit_log: %q %q %v; want the requeue by dana", who, action, err)
	}

	// Discard every row_fatal row at once, from the filtered list.
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO stuck_messages (id, topic, key, payload, created_at, attempts, last_error, error_kind)
		VALUES (200, 'orders', 'a', 'x', now(), 1, 'MESSAGE_TOO_LARGE', 'row_fatal'),
		       (201, 'payments', 'b', 'y', now(), 1, 'INVALID_RECORD', 'row_fatal'),
		       (202, 'orders', 'c', 'z', now(), 10, 'NOT_ENOUGH_REPLICAS', 'row_retriable')`); err != nil {
		t.Fatal(err)
	}
	// Requeueing a row_fatal row, alone or with others, warns on the
	// confirmation that its cause cannot have changed by itself, as the
	// CLI's stuck requeue does; cancelled here, nothing is done.
	do("ask to requeue a row_fatal row",
		chromedp.Navigate(srv.URL+"/stuck/200"),
		chromedp.Click(chromedp.CSS(`#requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
	)
	if count(`#fatal-warning`) != 1 {
		t.Fatal("requeue confirmation of row_fatal row 200: no warning")
	}
	if w := text(`#fatal-warning`); !strings.HasPrefix(w, "1 of them failed for good (row_fatal)") || !strings.Contains(w, "fail again") {
		t.Errorf("requeue confirmation of row 200: warning %q", w)
	}
	do("ask to requeue every row of orders",
		chromedp.Navigate(srv.URL+"/stuck?topic=orders"),
		chromedp.Click(chromedp.CSS(`#bulk-requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
	)
	if count(`#fatal-warning`) != 1 {
		t.Fatal("requeue confirmation of topic orders (rows 200 and 202): no warning")
	}
	if w := text(`#fatal-warning`); !strings.HasPrefix(w, "1 of them failed for good (row_fatal)") {
		t.Errorf("requeue confirmation of topic orders (rows 200 and 202): warning %q", w)
	}
	if n := stuckCount(); n != 3 {
		t.Fatalf("%d stuck rows after the cancelled requeues, want 3", n)
	}

	do("discard all row_fatal rows",
		chromedp.Navigate(srv.URL+"/stuck?kind=row_fatal"),
		chromedp.Click(chromedp.CSS(`#bulk-discard`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
		chromedp.SendKeys(chromedp.CSS(`input[name=reason]`), "poison rows"),
		chromedp.Click(chromedp.CSS(`#confirm`)),
		chromedp.WaitVisible(chromedp.CSS(`#result`)),
	)
	if result := text(`#result`); result != "Discarded 2 row(s)" {
		t.Fatalf("bulk discard: %q", result)
	}
	var left []int64
	rows, err := db.Pool.Query(ctx, `SELECT id FROM stuck_messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { left = append(left, id); return nil }); err != nil {
		t.Fatal(err)
	}
	var detail, by string
	if err := db.Pool.QueryRow(ctx, `SELECT detail FROM audit_log WHERE action = 'discard'`).Scan(&detail); err != nil ||
		fmt.Sprint(left) != "[202]" || detail != "error_kind=row_fatal; reason: poison rows" {
		t.Errorf("after the bulk discard: stuck %v, audit detail %q (%v); want [202] and the filter with the reason", left, detail, err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT discarded_by FROM discarded_messages WHERE id = 201`).Scan(&by); err != nil || !strings.Contains(by, "(dana)") {
		t.Errorf("discarded_messages.discarded_by = %q, %v; want dana", by, err)
	}
}

// Two outboxes' consoles served under /<schema>/, as relay run does with
// several schemas: every link and form keeps its outbox's prefix, the
// header's selector switches outbox, one sign-in serves both, and an action
// acts on the outbox whose page it came from.
func TestConsoleOutboxSelectorInChromium(t *testing.T) {
	dbA, dbB := relaytest.NewDB(t), relaytest.NewDB(t)
	ctx := context.Background()
	for _, s := range []struct {
		db *relaytest.DB
		id int
	}{{dbA, 7}, {dbB, 9}} {
		if _, err := s.db.Pool.Exec(ctx, `
			INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts, first_error, last_error, error_kind)
			VALUES ($1, 'orders', 'k', 'p', '{}', now(), 10, 'NOT_ENOUGH_REPLICAS', 'NOT_ENOUGH_REPLICAS', 'row_retriable')`, s.id); err != nil {
			t.Fatal(err)
		}
	}
	links := []console.Outbox{{Name: dbA.Schema, Base: "/" + dbA.Schema}, {Name: dbB.Schema, Base: "/" + dbB.Schema}}
	mux := http.NewServeMux()
	for i, db := range []*relaytest.DB{dbA, dbB} {
		c, err := console.New(console.Config{Pool: db.Pool, AdminToken: token, Base: links[i].Base, Outbox: db.Schema, Outboxes: links})
		if err != nil {
			t.Fatal(err)
		}
		mux.Handle(links[i].Base+"/", http.StripPrefix(links[i].Base, c.Handler()))
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	b := browser(t)
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(b, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			html, _ := chromedp.Run(b, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
			t.Fatalf("read %s: %v; the page:\n%s", sel, err, html)
		}
		return v
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(b, steps...); err != nil {
			html, _ := chromedp.Run(b, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
			t.Fatalf("%s: %v; the page:\n%s", what, err, html)
		}
	}
	pathNow := func() string {
		t.Helper()
		p, err := chromedp.Run(b, chromedp.Evaluate[string](`location.pathname`))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	do("open outbox A's stuck rows and one of them",
		chromedp.Navigate(srv.URL+links[0].Base+"/stuck"),
		chromedp.Click(chromedp.CSS(`#stuck-rows a[href="`+links[0].Base+`/stuck/7"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#payload`)),
	)
	if cur := text(`#outboxes a.current`); cur != dbA.Schema {
		t.Errorf("selector marks %q as current on A's page, want %s", cur, dbA.Schema)
	}
	styled, err := chromedp.Run(b, chromedp.Evaluate[string](`getComputedStyle(document.querySelector("header")).display`))
	if err != nil || styled != "flex" {
		t.Errorf("header display %q (%v): the stylesheet under the prefix did not load", styled, err)
	}

	do("switch to outbox B",
		chromedp.Click(chromedp.CSS(`#outboxes a[href="`+links[1].Base+`/"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#stuck`)),
	)
	if p, cur, stuck := pathNow(), text(`#outboxes a.current`), text(`#stuck`); p != links[1].Base+"/" || cur != dbB.Schema || stuck != "1" {
		t.Errorf("after switching: at %s, current %q, stuck tile %q; want %s/, %s, 1", p, cur, stuck, links[1].Base, dbB.Schema)
	}

	do("sign in on B",
		chromedp.Click(chromedp.CSS(`#signin`)),
		chromedp.SendKeys(chromedp.CSS(`#name`), "dana"),
		chromedp.SendKeys(chromedp.CSS(`#token`), token),
		chromedp.Click(chromedp.CSS(`#login`)),
		chromedp.WaitVisible(chromedp.CSS(`#operator`)),
	)
	if p := pathNow(); p != links[1].Base+"/" {
		t.Errorf("signed in at %s, want back on %s/", p, links[1].Base)
	}
	do("requeue A's row, signed in once",
		chromedp.Navigate(srv.URL+links[0].Base+"/stuck/7"),
		chromedp.Click(chromedp.CSS(`#requeue`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
		chromedp.Click(chromedp.CSS(`#confirm`)),
		chromedp.WaitVisible(chromedp.CSS(`#result`)),
	)
	if result := text(`#result`); result != "Requeued 1 row(s)" {
		t.Fatalf("requeue on A: %q", result)
	}
	if a, b := dbA.Count(t, "pending"), dbB.Count(t, "pending"); a != 1 || b != 0 {
		t.Errorf("pending rows after the requeue on A: A %d, B %d; want 1 and 0", a, b)
	}
}

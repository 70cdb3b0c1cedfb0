// Package console is the relay's web console: an HTML view of the outbox
// (backlog per topic, stuck rows and the rows they hold back, recent sent
// rows, delivery over the last hour, the last verify result, the audit log)
// and the operator's actions on stuck rows (requeue and discard, one row or
// every row matching a filter, each confirmed on a second page).
//
// Security. Reading needs nothing; acting needs a session, which an
// operator opens by signing in with the admin token and a name. The token
// is compared in constant time and never shown or logged; the session
// cookie is HttpOnly, SameSite=Strict and carries an HMAC keyed by the
// token, so changing the token ends every session. Every action is a POST
// with a CSRF token bound to the session, from the console's own origin.
// html/template escapes every value taken from a row; payloads are shown as
// text or hex, never interpreted. Each action is written to audit_log with
// the operator's name, in the transaction of the action.
package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console needs.
type Config struct {
	// Pool reaches the outbox schema (its search_path).
	Pool *pgxpool.Pool
	// AdminToken enables actions for operators who sign in with it.
	// Empty: the console is read-only.
	AdminToken string
	// LastVerify, if set, returns the daemon's latest verify result.
	LastVerify func() (VerifyResult, bool)
	Logger     *slog.Logger
	// Base is the path the console is served under, without a trailing
	// slash (the caller strips it from requests, e.g. with
	// http.StripPrefix); empty: the root. Every link and form starts with
	// it.
	Base string
	// Outbox names the outbox this console shows, and Outboxes every
	// outbox of the process, for the selector in the header; both empty
	// when the process serves one.
	Outbox   string
	Outboxes []Outbox
}

// Outbox is an entry of the outbox selector: a schema and the Base of its
// console.
type Outbox struct {
	Name, Base string
}

// VerifyResult is the outcome of the daemon's latest verify run.
type VerifyResult struct {
	At                                      time.Time
	Since                                   time.Time
	Checked, Missing, Truncated, Mismatched int64
	Err                                     string
}

// sessionTTL is how long a sign-in lasts.
const sessionTTL = 12 * time.Hour

const cookieName = "relay_console"

// Console serves the pages.
type Console struct {
	cfg  Config
	key  []byte // HMAC key of sessions and CSRF tokens; nil without a token
	tmpl map[string]*template.Template
	log  *slog.Logger
}

// New returns the console's handler.
func New(cfg Config) (*Console, error) {
	if cfg.Pool == nil {
		return nil, errors.New("console: no pool")
	}
	c := &Console{cfg: cfg, log: cfg.Logger, tmpl: map[string]*template.Template{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.AdminToken != "" {
		k := sha256.Sum256([]byte("outbox-relay-console\x00" + cfg.AdminToken))
		c.key = k[:]
	}
	pages, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, p := range pages {
		name := strings.TrimSuffix(strings.TrimPrefix(p, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", p)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		c.tmpl[name] = t
	}
	return c, nil
}

// Handler returns the console's routes.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /stuck", c.stuckList)
	mux.HandleFunc("GET /stuck/{id}", c.stuckDetail)
	mux.HandleFunc("POST /stuck/{id}/{action}", c.act)
	mux.HandleFunc("POST /stuck/{action}", c.act)
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	mux.HandleFunc("POST /logout", c.logout)
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	return securityHeaders(mux)
}

// securityHeaders forbids scripts, framing and sniffing: the console needs
// none of them, and a payload that slipped through escaping could not run.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// session is a signed-in operator.
type session struct {
	Name string
	CSRF string
}

// sign returns the MAC of parts under the console's key.
func (c *Console) sign(parts ...string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// session returns the operator signed in on r, or nil.
func (c *Console) session(r *http.Request) *session {
	if c.key == nil {
		return nil
	}
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	parts := strings.Split(ck.Value, ".")
	if len(parts) != 3 {
		return nil
	}
	nameB, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || time.Now().Unix() > exp {
		return nil
	}
	if !hmac.Equal([]byte(parts[2]), []byte(c.sign("session", string(nameB), parts[1]))) {
		return nil
	}
	return &session{Name: string(nameB), CSRF: c.sign("csrf", ck.Value)}
}

// tokenMatches compares a token given at sign-in with the admin token in
// constant time (over their hashes, so the length leaks nothing either).
func (c *Console) tokenMatches(given string) bool {
	if c.cfg.AdminToken == "" {
		return false
	}
	a := sha256.Sum256([]byte(given))
	b := sha256.Sum256([]byte(c.cfg.AdminToken))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// sameOrigin refuses a POST sent from another site: its Origin (or, if
// absent, Referer) must be this host.
func sameOrigin(r *http.Request) bool {
	src := r.Header.Get("Origin")
	if src == "" {
		src = r.Header.Get("Referer")
	}
	if src == "" {
		return true // not a browser's cross-site request; the CSRF token decides
	}
	u, err := url.Parse(src)
	return err == nil && u.Host == r.Host
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "login", map[string]any{"Enabled": c.key != nil})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		c.refuse(w, r, "the request did not come from this console")
		return
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	if !c.tokenMatches(r.PostFormValue("token")) || name == "" || len(name) > 100 {
		c.log.Warn("console_login_refused", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusForbidden, "login", map[string]any{"Enabled": c.key != nil, "Failed": true})
		return
	}
	exp := strconv.FormatInt(time.Now().Add(sessionTTL).Unix(), 10)
	value := base64.RawURLEncoding.EncodeToString([]byte(name)) + "." + exp + "." + c.sign("session", name, exp)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int(sessionTTL / time.Second)})
	c.log.Info("console_login", "operator", name, "remote", r.RemoteAddr)
	http.Redirect(w, r, c.cfg.Base+"/", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, c.cfg.Base+"/", http.StatusSeeOther)
}

// page is what every template gets.
type page struct {
	Session *session
	Actions bool // an admin token is configured
	Data    any
	// Base, Outbox and Outboxes are Config's.
	Base     string
	Outbox   string
	Outboxes []Outbox
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	t := c.tmpl[name]
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	p := page{Session: c.session(r), Actions: c.key != nil, Data: data, Base: c.cfg.Base, Outbox: c.cfg.Outbox, Outboxes: c.cfg.Outboxes}
	if err := t.Execute(w, p); err != nil {
		c.log.Warn("console_render", "page", name, "error", err)
	}
}

func (c *Console) refuse(w http.ResponseWriter, r *http.Request, why string) {
	c.render(w, r, http.StatusForbidden, "message", map[string]any{"Title": "Refused", "Text": why})
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	c.log.Warn("console_error", "path", r.URL.Path, "error", err)
	c.render(w, r, http.StatusInternalServerError, "message", map[string]any{"Title": "Error", "Text": err.Error()})
}

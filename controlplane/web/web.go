// Package web is the LPMOS dashboard: a static single-page application
// (vanilla JavaScript and CSS, no framework, nothing from a CDN) embedded
// into the binary with embed, which operators use to create install tasks,
// review the hardware a machine reported, approve or reject it (one task or
// many selected at once), watch the install progress live, retry a failed
// or cancelled task, see which regions are online and how busy they are,
// go through the dead-letter list (tasks that failed on their last
// attempt, webhook deliveries that gave up), and browse the machine
// inventory: search and filter machines, see one machine's hardware, BMC,
// power state and tasks, and ask its region to power it on, off or cycle,
// and manage the auto-approval rules (admins; everyone sees them, and a
// task waiting for approval shows why no rule approved it).
//
// Handler serves the HTML shell for every page route of the dashboard
// (/, /dashboard, /tasks, /tasks/create, /tasks/{id}, /tasks/{id}/approve,
// /regions, /dlq, /machines, /machines/{mac}, /rules; the script renders the view
// from the URL) and the assets under /static/.
// Everything else is 404, and every response carries a strict Content
// Security Policy that allows no inline script or style.
//
// The application is just another API client: in the browser it talks only
// to the control plane's REST API (/api/v1) with a bearer token and to its
// WebSocket (/ws). The token lives in the tab's sessionStorage and is sent
// explicitly; no cookie is ever set, so there is no ambient credential for
// a cross-site request to ride on (no CSRF) and the CSP is what keeps a
// script from reading the token. This package therefore knows nothing about tasks, the
// store or authentication, and it must not import other LPMOS packages;
// the control plane mounts Handler beside its API.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed assets
var assets embed.FS

// ContentSecurityPolicy is sent with every response. It allows scripts,
// styles, fonts and connections only from the serving origin and no inline
// code at all, so an injected string can never run even if a rendering bug
// let markup through. Under CSP Level 3, which Chromium, Firefox and Safari
// implement, 'self' in connect-src also matches ws: and wss: URLs of the
// same host and port, so the dashboard's WebSocket needs no extra source.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; " +
	"form-action 'self'; frame-ancestors 'none'"

// asset is one file the handler serves, read once from the embedded tree.
type asset struct {
	data  []byte
	ctype string
	etag  string
}

// site is the immutable table of what Handler serves, built on first use.
type site struct {
	shell  *asset            // index.html, the answer to every page route
	static map[string]*asset // by path below /static/, e.g. "app.js"
}

var loadSite = sync.OnceValue(func() *site {
	s := &site{static: map[string]*asset{}}
	s.shell = newAsset("index.html", mustRead("assets/index.html"))
	sub, err := fs.Sub(assets, "assets/static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		s.static[p] = newAsset(p, data)
		return nil
	})
	if err != nil {
		panic(err)
	}
	return s
})

func mustRead(name string) []byte {
	b, err := assets.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}

// contentTypes pins the types of what we ship instead of trusting the
// host's MIME tables, which differ between systems.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
	".json": "application/json",
}

func newAsset(name string, data []byte) *asset {
	ext := path.Ext(name)
	ct, ok := contentTypes[ext]
	if !ok {
		if ct = mime.TypeByExtension(ext); ct == "" {
			ct = "application/octet-stream"
		}
	}
	sum := sha256.Sum256(data)
	return &asset{data: data, ctype: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
}

// Handler returns the dashboard: the HTML shell on its page routes and the
// embedded assets under /static/. Only GET and HEAD are allowed.
func Handler() http.Handler {
	return handler{site: loadSite()}
}

type handler struct{ site *site }

func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", ContentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")

	var a *asset
	if rest, ok := strings.CutPrefix(r.URL.Path, "/static/"); ok {
		// An exact lookup in the table of embedded files: "..", "" (a
		// directory listing) and anything not shipped are simply absent.
		a = h.site.static[rest]
	} else if isPage(r.URL.Path) {
		a = h.site.shell
	}
	if a == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	hdr.Set("Content-Type", a.ctype)
	// The assets are not fingerprinted, so browsers revalidate every time;
	// the ETag makes that a cheap 304 and an upgrade is seen on next load.
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.data))
}

// isPage reports whether p is one of the dashboard's page routes. Task
// and machine pages must name a well-formed task ID or canonical MAC so
// that typos and probes get a real 404 rather than an empty shell.
func isPage(p string) bool {
	switch p {
	case "/", "/dashboard", "/tasks", "/tasks/create", "/regions", "/dlq", "/machines", "/rules":
		return true
	}
	if mac, ok := strings.CutPrefix(p, "/machines/"); ok {
		return isCanonicalMAC(mac)
	}
	rest, ok := strings.CutPrefix(p, "/tasks/")
	if !ok {
		return false
	}
	id, tail, hasTail := strings.Cut(rest, "/")
	if hasTail && tail != "approve" {
		return false
	}
	return isTaskID(id)
}

// isTaskID checks the canonical lowercase UUID form task IDs have. It is a
// copy of lpmos.ValidateTaskID's shape check, kept here so that this
// package stays free of LPMOS imports.
func isTaskID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// isCanonicalMAC checks the form the API writes MACs in (lowercase hex
// pairs joined by colons), the only form the dashboard links to. Like
// isTaskID it copies a shape check so as not to import lpmos.
func isCanonicalMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i%3 == 2 {
			if c != ':' {
				return false
			}
		} else if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

package web

import (
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const someTaskID = "550e8400-e29b-41d4-a716-446655440000"

func serve(t *testing.T, method, target string, hdr ...string) *http.Response {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	Handler().ServeHTTP(w, r)
	return w.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(b)
}

func assertSecurityHeaders(t *testing.T, res *http.Response, target string) {
	t.Helper()
	h := res.Header
	assert.Equal(t, "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
		h.Get("Content-Security-Policy"), target)
	assert.Equal(t, "nosniff", h.Get("X-Content-Type-Options"), target)
	assert.Equal(t, "no-referrer", h.Get("Referrer-Policy"), target)
	assert.Equal(t, "DENY", h.Get("X-Frame-Options"), target)
}

func TestPageRoutesServeTheShell(t *testing.T) {
	routes := []string{"/", "/dashboard", "/tasks", "/tasks/create",
		"/tasks/" + someTaskID, "/tasks/" + someTaskID + "/approve",
		"/tasks?status=installing&region_id=dc1", "/tasks?mac_prefix=52:54:00", "/regions", "/dlq", "/dlq?kind=tasks",
		"/machines", "/machines?mac_prefix=52:54:00&min_cores=8&tag=rack=r7", "/machines/52:54:00:aa:00:01", "/rules"}
	for _, target := range routes {
		res := serve(t, http.MethodGet, target)
		require.Equal(t, http.StatusOK, res.StatusCode, target)
		assert.Equal(t, "text/html; charset=utf-8", res.Header.Get("Content-Type"), target)
		assert.Equal(t, "no-cache", res.Header.Get("Cache-Control"), target)
		assertSecurityHeaders(t, res, target)
		b := body(t, res)
		assert.Contains(t, b, `<script src="/static/app.js" defer></script>`, target)
		assert.Contains(t, b, `<main id="app"`, target)

		head := serve(t, http.MethodHead, target)
		assert.Equal(t, http.StatusOK, head.StatusCode, target)
		assert.Empty(t, body(t, head), target)
		assertSecurityHeaders(t, head, target)
	}
}

func TestStaticAssets(t *testing.T) {
	types := map[string]string{
		"/static/app.js":      "text/javascript; charset=utf-8",
		"/static/app.css":     "text/css; charset=utf-8",
		"/static/favicon.svg": "image/svg+xml",
	}
	for target, ct := range types {
		res := serve(t, http.MethodGet, target)
		require.Equal(t, http.StatusOK, res.StatusCode, target)
		assert.Equal(t, ct, res.Header.Get("Content-Type"), target)
		assert.Equal(t, "no-cache", res.Header.Get("Cache-Control"), target)
		assertSecurityHeaders(t, res, target)
		assert.NotEmpty(t, body(t, res), target)

		// Revalidation is a 304 without a body.
		etag := res.Header.Get("ETag")
		require.NotEmpty(t, etag, target)
		again := serve(t, http.MethodGet, target, "If-None-Match", etag)
		assert.Equal(t, http.StatusNotModified, again.StatusCode, target)
		assert.Empty(t, body(t, again), target)
	}
}

func TestUnknownPathsAndTraversalAre404(t *testing.T) {
	for _, target := range []string{
		"/static/", "/static", "/static/../web.go", "/static/../assets/index.html",
		"/static/%2e%2e/web.go", "/static/..%2fweb.go", "/static/./app.js", "/static//app.js",
		"/static/app.js/", "/static/nope.js", "/static/index.html", "/index.html", "/assets/index.html",
		"/web.go", "/nope", "/dashboard/", "/tasks/", "/regions/", "/regions/dc1", "/dlq/", "/dlq/tasks", "/tasks/create/", "/tasks/not-a-task",
		"/tasks/" + strings.ToUpper(someTaskID), "/tasks/" + someTaskID + "/", "/tasks/" + someTaskID + "/edit",
		"/tasks/" + someTaskID + "/approve/x", "/favicon.ico",
		"/machines/", "/machines/52:54:00:AA:00:01", "/machines/52-54-00-aa-00-01", "/machines/52:54:00:aa:00",
		"/machines/52:54:00:aa:00:01/", "/machines/52:54:00:aa:00:01/power", "/machines/525400aa0001",
		"/rules/", "/rules/big-dell",
	} {
		res := serve(t, http.MethodGet, target)
		assert.Equal(t, http.StatusNotFound, res.StatusCode, target)
		assertSecurityHeaders(t, res, target)
		assert.NotContains(t, body(t, res), "package web", target)
	}
}

func TestOnlyGetAndHead(t *testing.T) {
	for _, target := range []string{"/", "/tasks/create", "/tasks/" + someTaskID + "/approve", "/static/app.js"} {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
			res := serve(t, m, target)
			assert.Equal(t, http.StatusMethodNotAllowed, res.StatusCode, m+" "+target)
			assert.Equal(t, "GET, HEAD", res.Header.Get("Allow"), m+" "+target)
			assertSecurityHeaders(t, res, m+" "+target)
		}
	}
}

// readAssets returns the embedded files whose names end in ext.
func readAssets(t *testing.T, ext string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := fs.WalkDir(assets, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ext) {
			return err
		}
		b, err := fs.ReadFile(assets, p)
		out[p] = string(b)
		return err
	})
	require.NoError(t, err)
	require.NotEmpty(t, out, "no embedded %s files", ext)
	return out
}

// The app renders attacker-controlled strings (tags, agent messages,
// hardware strings); it must only ever build DOM nodes and set text.
func TestScriptsNeverParseMarkupOrCode(t *testing.T) {
	forbidden := []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function",
		"document.write", "createContextualFragment", "DOMParser", "setAttribute('style'", "setAttribute(\"style\""}
	for name, src := range readAssets(t, ".js") {
		for _, f := range forbidden {
			assert.NotContains(t, src, f, "%s uses %s", name, f)
		}
		// setTimeout/setInterval with a string argument is eval too.
		assert.NotRegexp(t, `set(Timeout|Interval)\(\s*['"`+"`]", src, name)
		// No external code or endpoints: everything comes from this origin.
		assert.NotRegexp(t, `https?://`, src, name)
	}
}

func TestHTMLHasNoInlineCode(t *testing.T) {
	for name, src := range readAssets(t, ".html") {
		scripts := regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script\s*>`).FindAllStringSubmatch(src, -1)
		require.NotEmpty(t, scripts, name)
		for _, s := range scripts {
			assert.Regexp(t, `\bsrc="/static/[a-z0-9.-]+\.js"`, s[1], "%s: script without src", name)
			assert.Empty(t, strings.TrimSpace(s[2]), "%s: inline script body", name)
		}
		assert.NotRegexp(t, `(?i)<[^>]*\son[a-z]+\s*=`, src, "%s: inline event handler", name)
		assert.NotRegexp(t, `(?i)<[^>]*\sstyle\s*=`, src, "%s: style attribute", name)
		assert.NotRegexp(t, `(?i)<style\b`, src, "%s: inline style element", name)
		assert.NotRegexp(t, `(?i)javascript:`, src, name)
		assert.NotRegexp(t, `https?://`, src, "%s: external resource", name)

		// Everything the shell loads is shipped.
		for _, m := range regexp.MustCompile(`(?:src|href)="(/static/[^"]+)"`).FindAllStringSubmatch(src, -1) {
			res := serve(t, http.MethodGet, m[1])
			assert.Equal(t, http.StatusOK, res.StatusCode, "%s references %s", name, m[1])
		}
	}
}

func TestCSSHasNoExternalResources(t *testing.T) {
	for name, src := range readAssets(t, ".css") {
		assert.NotRegexp(t, `https?://`, src, name)
		assert.NotContains(t, src, "@import", name)
		assert.NotContains(t, src, "expression(", name)
	}
}

// The dashboard is a client of the API like any other; it must not reach
// into the control plane's or the task model's Go code.
func TestImportsNoLPMOSPackage(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		parsed, err := parser.ParseFile(fset, f, src, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range parsed.Imports {
			assert.NotContains(t, imp.Path.Value, "github.com/lpmos/lpmos", "%s imports %s", f, imp.Path.Value)
		}
	}
}

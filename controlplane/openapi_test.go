package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/store/memory"
)

// The OpenAPI document is held to the code three ways: its routes are the
// endpoints table's (TestOpenAPIDocumentsEveryRoute), it is a valid
// OpenAPI 3.1 document (TestOpenAPIServed), and every request the API
// tests send through startCP and every answer they get is checked against
// it (apiContract, below).

// loadAPIDoc loads and validates the document as served.
func loadAPIDoc(data []byte) (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	return doc, nil
}

// apiContract is the document with its router, loaded once per test binary.
var apiContract = sync.OnceValues(func() (*contract, error) {
	data, err := controlplane.OpenAPIJSON()
	if err != nil {
		return nil, err
	}
	doc, err := loadAPIDoc(data)
	if err != nil {
		return nil, err
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &contract{doc: doc, router: router}, nil
})

type contract struct {
	doc    *openapi3.T
	router routers.Router
}

// bearerPresent is the document's bearer scheme as a validator can check
// it: a token is there. Whether it is good is the server's to say (401).
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	if httpjson.BearerToken(in.RequestValidationInput.Request) == "" {
		return errors.New("no bearer token")
	}
	return nil
}

// exchange is one request and its answer, as the client and server saw them.
type exchange struct {
	req        *http.Request
	reqBody    []byte
	reqBodyErr error // reading the whole body failed: it cannot be checked
	status     int
	header     http.Header
	respBody   []byte
}

// check holds one exchange to the document: a request the document
// allows may be refused for reasons it cannot express, but one it does
// not allow must be refused with a 4xx; every answer's status must be
// documented for its operation and its body must match. A method and path
// the document does not have must be refused (4xx) with the error body.
func (c *contract) check(x exchange) error {
	ctx := context.Background()
	req := x.req.Clone(ctx)
	req.Body = io.NopCloser(bytes.NewReader(x.reqBody))
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		// (GET /api/v1/tasks/batch reaches GET /api/v1/tasks/{id}, which
		// refuses "batch" as a task ID: any refusal will do.)
		if x.status < 400 || x.status >= 500 {
			return fmt.Errorf("not in the document (%v), yet answered %d", err, x.status)
		}
		body, err := decodeJSON(x.respBody)
		if err != nil {
			return err
		}
		return c.doc.Components.Schemas["ErrorBody"].Value.VisitJSON(body, openapi3.EnableJSONSchema2020())
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: bearerPresent},
	}
	if x.reqBodyErr != nil {
		in.Options.ExcludeRequestBody = true
	}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil && (x.status < 400 || x.status >= 500) {
		return fmt.Errorf("the document does not allow the request, yet it was answered %d: %w", x.status, err)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: x.status, Header: x.header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	out.SetBodyBytes(x.respBody)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		return fmt.Errorf("answer %d does not match the document: %w\nbody: %.2000s", x.status, err, x.respBody)
	}
	return nil
}

func decodeJSON(data []byte) (any, error) {
	var v any
	err := json.Unmarshal(data, &v)
	return v, err
}

// checkedAPI serves next, checking every /api/ exchange against the
// document; a mismatch fails t. Everything else (the dashboard, /ws,
// /metrics) passes untouched.
func checkedAPI(t testing.TB, next http.Handler) http.Handler {
	return checkedAPIFor(func() testing.TB { return t }, next)
}

// checkedAPIFor is checkedAPI failing the test tb returns at each request
// (a fuzz target's, which changes with each input).
func checkedAPIFor(tb func() testing.TB, next http.Handler) http.Handler {
	c, err := apiContract()
	require.NoError(tb(), err, "the OpenAPI document")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A path http.ServeMux cleans first ("//", "/../") is redirected
		// to the clean one before any API route sees it.
		if !strings.HasPrefix(r.URL.Path, "/api/") || path.Clean(r.URL.Path) != r.URL.Path {
			next.ServeHTTP(w, r)
			return
		}
		var reqBody bytes.Buffer
		body := r.Body
		r.Body = readCloser{io.TeeReader(body, &reqBody), body}
		tw := &teeWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(tw, r)
		// The part of the body the handler did not read (it refused
		// before, or stopped at the size limit).
		_, err := io.Copy(io.Discard, r.Body)
		x := exchange{req: r, reqBody: reqBody.Bytes(), reqBodyErr: err, status: tw.status, header: w.Header().Clone(), respBody: tw.body.Bytes()}
		if err := c.check(x); err != nil {
			tb().Errorf("OpenAPI contract: %s %s: %v", r.Method, r.URL.RequestURI(), err)
		}
	})
}

type readCloser struct {
	io.Reader
	io.Closer
}

// teeWriter keeps a copy of the status and body written.
type teeWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (w *teeWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	w.body.Write(b)
	return w.ResponseWriter.Write(b)
}

func (w *teeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// The document is served to anyone, is the embedded one, and is a valid
// OpenAPI 3.1 document.
func TestOpenAPIServed(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)

	resp, err := http.Get(cp.ts.URL + controlplane.OpenAPIPath)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "no token needed: %s", data)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	want, err := controlplane.OpenAPIJSON()
	require.NoError(t, err)
	assert.Equal(t, want, data)

	doc, err := loadAPIDoc(data)
	require.NoError(t, err)
	assert.Equal(t, "3.1.0", doc.OpenAPI)
	assert.True(t, doc.IsOpenAPI31OrLater())
	require.Contains(t, doc.Components.SecuritySchemes, "bearer")
	bearer := doc.Components.SecuritySchemes["bearer"].Value
	assert.Equal(t, "http", bearer.Type)
	assert.Equal(t, "bearer", bearer.Scheme)
	errBody := doc.Components.Schemas["Error"].Value
	for _, f := range []string{"code", "message", "field"} {
		assert.Contains(t, errBody.Properties, f, "the error body has %s", f)
	}
}

// Every route of the endpoints table is in the document with its method,
// path template and role, and the document has nothing else but itself.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	c, err := apiContract()
	require.NoError(t, err)

	type op struct{ method, path string }
	documented := map[op]*openapi3.Operation{}
	for path, item := range c.doc.Paths.Map() {
		for method, o := range item.Operations() {
			documented[op{method, path}] = o
		}
	}
	public := op{http.MethodGet, controlplane.OpenAPIPath}
	require.Contains(t, documented, public)
	assert.NotNil(t, documented[public].Security, "the document itself needs no token")
	assert.Empty(t, *documented[public].Security, "the document itself needs no token")
	delete(documented, public)

	routes := controlplane.Endpoints()
	require.NotEmpty(t, routes)
	for _, e := range routes {
		o, ok := documented[op{e.Method, e.Path}]
		if !assert.True(t, ok, "%s %s is not documented", e.Method, e.Path) {
			continue
		}
		delete(documented, op{e.Method, e.Path})
		assert.Equal(t, e.Role, o.Extensions["x-lpmos-role"], "%s %s: x-lpmos-role", e.Method, e.Path)
		assert.Contains(t, o.Description, "Role: **"+e.Role+"**", "%s %s: the description names the role", e.Method, e.Path)
		assert.Nil(t, o.Security, "%s %s takes the document's bearer security", e.Method, e.Path)
		assert.Contains(t, o.Responses.Map(), "401", "%s %s: 401 documented", e.Method, e.Path)
		if e.Role != "viewer" {
			assert.Contains(t, o.Responses.Map(), "403", "%s %s: 403 documented", e.Method, e.Path)
		}
	}
	var extra []string
	for o := range documented {
		extra = append(extra, o.method+" "+o.path)
	}
	slices.Sort(extra)
	assert.Empty(t, extra, "documented, but no such route")
	require.Len(t, c.doc.Security, 1)
	assert.Contains(t, c.doc.Security[0], "bearer")
}

// The contract check itself: it catches an answer the document does not
// allow, and a request it does not allow that the API accepted.
func TestOpenAPIContractCatchesDrift(t *testing.T) {
	c, err := apiContract()
	require.NoError(t, err)
	get := func(path string) *http.Request {
		r, err := http.NewRequest(http.MethodGet, "http://cp"+path, nil)
		require.NoError(t, err)
		r.Header.Set("Authorization", "Bearer "+viewerToken)
		return r
	}
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	tests := []struct {
		name string
		x    exchange
		ok   bool
	}{
		{"a documented answer", exchange{req: get("/api/v1/whoami"), status: 200, header: jsonHeader,
			respBody: []byte(`{"subject":"token:vera","role":"viewer"}`)}, true},
		{"a field missing", exchange{req: get("/api/v1/whoami"), status: 200, header: jsonHeader,
			respBody: []byte(`{"subject":"token:vera"}`)}, false},
		{"an undocumented status", exchange{req: get("/api/v1/whoami"), status: 418, header: jsonHeader,
			respBody: []byte(`{"error":{"code":"teapot","message":"short and stout"}}`)}, false},
		{"an error without a code", exchange{req: get("/api/v1/whoami"), status: 401, header: jsonHeader,
			respBody: []byte(`{"error":{"message":"who?"}}`)}, false},
		{"a bad query refused", exchange{req: get("/api/v1/tasks?sort=name"), status: 400, header: jsonHeader,
			respBody: []byte(`{"error":{"code":"invalid_request","message":"bad sort","field":"sort"}}`)}, true},
		{"a bad query accepted", exchange{req: get("/api/v1/tasks?sort=name"), status: 200, header: jsonHeader,
			respBody: []byte(`{"tasks":[],"total":0,"limit":50,"offset":0}`)}, false},
		{"an unknown path refused", exchange{req: get("/api/v1/nothing"), status: 404, header: jsonHeader,
			respBody: []byte(`{"error":{"code":"not_found","message":"no such API endpoint"}}`)}, true},
		{"an unknown path answered", exchange{req: get("/api/v1/nothing"), status: 200, header: jsonHeader,
			respBody: []byte(`{}`)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.check(tt.x)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}
}

// What the document does not have, the API refuses with its error body
// (startCP's contract check holds each answer to the document).
func TestOpenAPIUndocumentedRefused(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)
	for _, r := range []struct{ method, path string }{
		{"GET", "/api/v1/nothing"},
		{"GET", "/api/v2/tasks"},
		{"PATCH", "/api/v1/tasks/00000000-0000-4000-8000-000000000001"},
		{"GET", "/api/v1/tasks/batch"},
		{"POST", "/api/v1/whoami"},
	} {
		code, body := cp.do(r.method, r.path, adminToken, nil)
		assert.True(t, code >= 400 && code < 500, "%s %s: %d", r.method, r.path, code)
		assert.NotEmpty(t, errCode(body), "%s %s: %v", r.method, r.path, body)
	}
}

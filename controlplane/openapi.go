package controlplane

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"go.yaml.in/yaml/v3"
)

// OpenAPIPath is where the control plane serves the OpenAPI 3.1
// description of its REST API, as JSON, to anyone (no token needed).
const OpenAPIPath = "/api/v1/openapi.json"

// openAPIYAML is the API's description, written by hand: YAML reads and
// reviews better than JSON. Every route of endpoints is in it and nothing
// else; the API tests check each answer against it.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// openAPIJSON is the description as served: openapi.yaml turned into
// JSON once.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml as JSON: %w", err)
	}
	return data, nil
})

// serveOpenAPI answers GET /api/v1/openapi.json. Like the API's answers
// it is data, never a document to render; unlike them it may be cached,
// revalidated since a new version of the control plane may serve another.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	data, err := openAPIJSON()
	if err != nil { // New refused to start with a broken description
		http.Error(w, "no API description", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	_, _ = w.Write(data)
}

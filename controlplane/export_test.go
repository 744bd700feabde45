package controlplane

import "strings"

// Endpoint is a route of the REST API as the tests see it: method, path
// template and the role it needs.
type Endpoint struct{ Method, Path, Role string }

// Endpoints lists the routes of the endpoints table.
func Endpoints() []Endpoint {
	out := make([]Endpoint, 0, len(endpoints))
	for _, e := range endpoints {
		method, path, _ := strings.Cut(e.pattern, " ")
		out = append(out, Endpoint{Method: method, Path: path, Role: e.role.String()})
	}
	return out
}

// OpenAPIJSON is the API's description as served.
var OpenAPIJSON = openAPIJSON

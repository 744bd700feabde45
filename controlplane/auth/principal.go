package auth

import (
	"context"
	"fmt"
)

// Role is what a caller may do. Roles are ordered: each includes the ones
// below it.
type Role int

// The roles.
const (
	RoleNone     Role = iota
	RoleViewer        // read tasks, regions, the dashboard and live updates
	RoleOperator      // also create, approve, reject and cancel tasks
	RoleAdmin         // everything
)

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole parses "viewer", "operator" or "admin".
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleViewer, RoleOperator, RoleAdmin} {
		if s == r.String() {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("unknown role %q (viewer, operator, admin)", s)
}

// Principal is an authenticated caller.
type Principal struct {
	// Subject names the caller unambiguously: the way it signed in, a
	// colon, and the name that way gave ("token:admin", "hashed:ops",
	// "jwt:alice@example.com"). A JWT whose sub is "admin" is thus not the
	// admin token: it has its own rate limit and audit trail. It is what
	// becomes created_by, approved_by, rejected_by and the audit actor.
	Subject string
	Role    Role
	// Method says how the caller authenticated: MethodToken, MethodHashed
	// or MethodJWT.
	Method string
}

// How a caller signed in, the prefix of its Subject.
const (
	MethodToken  = "token"  // a StaticToken, given in clear text
	MethodHashed = "hashed" // a HashedToken, e.g. from a token file
	MethodJWT    = "jwt"    // a signed JWT; the name is its sub claim
)

func newPrincipal(method, name string, role Role) Principal {
	return Principal{Subject: method + ":" + name, Role: role, Method: method}
}

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the authenticated caller of a request's context.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

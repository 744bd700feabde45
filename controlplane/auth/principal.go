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
	// Subject names the caller; it becomes created_by / approved_by.
	Subject string
	Role    Role
	// Method says how the caller authenticated: "token" or "jwt".
	Method string
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

package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/lpmos/lpmos/rule"
)

func rulePath(name string) string { return "/api/v1/rules/" + url.PathEscape(name) }

// Rules lists the auto-approval rules, by name.
func (c *Client) Rules(ctx context.Context) ([]rule.Rule, error) {
	var out struct {
		Rules []rule.Rule `json:"rules"`
	}
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/rules", nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Rules, nil
}

// Rule returns one rule; ErrNotFound if there is none by that name.
func (c *Client) Rule(ctx context.Context, name string) (*rule.Rule, error) {
	var out rule.Rule
	if _, err := c.call(ctx, http.MethodGet, rulePath(name), nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PutRule creates or replaces the rule named r.Name (admins only: a rule
// approves machines without a person). A bad rule is an *Error with the
// field named. UpdatedAt and UpdatedBy are the server's.
func (c *Client) PutRule(ctx context.Context, r rule.Rule) (*rule.Rule, error) {
	var out rule.Rule
	r.UpdatedAt, r.UpdatedBy = time.Time{}, ""
	if _, err := c.call(ctx, http.MethodPut, rulePath(r.Name), nil, nil, r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteRule removes a rule; ErrNotFound if there is none.
func (c *Client) DeleteRule(ctx context.Context, name string) error {
	_, err := c.call(ctx, http.MethodDelete, rulePath(name), nil, nil, nil, nil)
	return err
}

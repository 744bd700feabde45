package controlplane

import (
	"errors"
	"net/http"

	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/rule"
)

// ruleErr maps the rule service's errors to API errors.
func ruleErr(err error) error {
	var ve *rule.ValidationError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ve):
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: err.Error(), Field: ve.Field}
	case errors.Is(err, rule.ErrNotFound):
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "%v", err)
	case errors.Is(err, rule.ErrConflict):
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeConflict, "%v", err)
	}
	return err
}

func (s *Server) listRules(w http.ResponseWriter, r *http.Request) error {
	rules, err := s.rules.List(r.Context())
	if err != nil {
		return err
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"rules": rules})
	return nil
}

func (s *Server) getRule(w http.ResponseWriter, r *http.Request) error {
	got, err := s.rules.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		return ruleErr(err)
	}
	httpjson.WriteJSON(w, http.StatusOK, got)
	return nil
}

// putRule creates or replaces a rule; the name is the path's.
func (s *Server) putRule(w http.ResponseWriter, r *http.Request) error {
	var body rule.Rule
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &body); err != nil {
		return err
	}
	name := r.PathValue("name")
	if body.Name != "" && body.Name != name {
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: "name differs from the path's", Field: "name"}
	}
	body.Name = name
	got, err := s.rules.Put(r.Context(), body, principal(r).Subject)
	if err != nil {
		return ruleErr(err)
	}
	httpjson.WriteJSON(w, http.StatusOK, got)
	return nil
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request) error {
	if err := s.rules.Delete(r.Context(), r.PathValue("name")); err != nil {
		return ruleErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

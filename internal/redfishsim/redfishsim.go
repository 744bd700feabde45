// Package redfishsim is a stand-in Redfish BMC for tests: an http.Handler
// serving the few resources of DMTF's Redfish schema that LPMOS's Redfish
// power driver uses, for one computer system. It is not a real BMC and not
// a complete Redfish service; it follows the schema (ServiceRoot,
// ComputerSystemCollection, ComputerSystem with PowerState, Boot and the
// ComputerSystem.Reset action, SessionService sessions) closely enough that
// a client written against it works against real BMCs, within those
// resources.
//
// It serves:
//
//   - GET /redfish/v1: the service root, without authentication, as the
//     specification requires.
//   - GET /redfish/v1/Systems: the collection, with one member.
//   - GET and PATCH /redfish/v1/Systems/{id}: PowerState, Boot (with
//     BootSourceOverrideTarget@Redfish.AllowableValues) and Actions (with
//     ResetType@Redfish.AllowableValues); an ETag, and If-Match honoured on
//     PATCH.
//   - POST /redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset.
//   - POST /redfish/v1/SessionService/Sessions (log in: X-Auth-Token and
//     Location), DELETE of a session (log out), unless Config.NoSessions.
//
// Everything but the service root needs a session token or HTTP basic
// authentication; bad credentials get 401. Errors carry a Redfish error
// body.
//
// The machine behind it is a Backend: Memory for unit tests, QEMU for a
// virtual machine driven over QMP. The handler owns the boot override:
// it passes the target to the backend when the machine boots and, if the
// override was "Once", clears it then, as firmware does.
package redfishsim

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Redfish PowerState values the backends report.
const (
	PowerOn  = "On"
	PowerOff = "Off"
)

// Backend is the machine behind the simulated BMC.
type Backend interface {
	// PowerState returns PowerOn or PowerOff.
	PowerState(ctx context.Context) (string, error)
	// PowerOn starts the machine, booting from boot ("Pxe", "Hdd", or ""
	// for its own order). It is called only while the machine is off.
	PowerOn(ctx context.Context, boot string) error
	// PowerOff stops the machine, gracefully (an ACPI power button
	// press) or not. It is called only while the machine is on.
	PowerOff(ctx context.Context, graceful bool) error
}

// Config describes the simulated BMC. Zero values are sensible defaults.
type Config struct {
	// Username and Password; default "admin" and "lpmos-redfish".
	Username, Password string
	// SystemID is the system's Id; default "1".
	SystemID string
	// ResetTypes are the ResetType@Redfish.AllowableValues; default On,
	// ForceOff, GracefulShutdown, ForceRestart, PowerCycle.
	ResetTypes []string
	// BootTargets are the BootSourceOverrideTarget@Redfish.AllowableValues;
	// default None, Pxe, Hdd.
	BootTargets []string
	// NoSessions: no SessionService (clients must use basic
	// authentication), as on some older BMCs.
	NoSessions bool
}

// Server is the simulated BMC, an http.Handler.
type Server struct {
	cfg     Config
	backend Backend

	resetMu sync.Mutex // one reset at a time: the state read and the action belong together

	mu          sync.Mutex        // guards the fields below; never held across a backend call
	sessions    map[string]string // token → session ID
	nextSession int
	bootTarget  string // BootSourceOverrideTarget
	bootEnabled string // BootSourceOverrideEnabled: Disabled, Once, Continuous
	generation  int    // bumps on every change; the ETag
	resets      []string
}

// New returns a Server for backend.
func New(cfg Config, backend Backend) *Server {
	if cfg.Username == "" {
		cfg.Username = "admin"
	}
	if cfg.Password == "" {
		cfg.Password = "lpmos-redfish"
	}
	if cfg.SystemID == "" {
		cfg.SystemID = "1"
	}
	if cfg.ResetTypes == nil {
		cfg.ResetTypes = []string{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"}
	}
	if cfg.BootTargets == nil {
		cfg.BootTargets = []string{"None", "Pxe", "Hdd"}
	}
	return &Server{cfg: cfg, backend: backend, sessions: map[string]string{}, bootTarget: "None", bootEnabled: "Disabled"}
}

// Sessions is the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// ExpireSessions ends every session, as a BMC's session timeout does.
func (s *Server) ExpireSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.sessions)
}

// Boot returns the boot override: BootSourceOverrideTarget and
// BootSourceOverrideEnabled.
func (s *Server) Boot() (target, enabled string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bootTarget, s.bootEnabled
}

// Resets lists the ResetTypes clients posted, in order.
func (s *Server) Resets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.resets)
}

const (
	root        = "/redfish/v1"
	systemsPath = root + "/Systems"
	sessionsURI = root + "/SessionService/Sessions"
	maxBody     = 64 << 10
)

func (s *Server) systemPath() string { return systemsPath + "/" + s.cfg.SystemID }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case path == root:
		s.only(w, r, http.MethodGet, s.serviceRoot)
		return
	case path == sessionsURI && r.Method == http.MethodPost && !s.cfg.NoSessions:
		s.login(w, r)
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="redfishsim"`)
		writeError(w, http.StatusUnauthorized, "Base.1.8.NoValidSession", "authentication required")
		return
	}
	switch {
	case path == systemsPath:
		s.only(w, r, http.MethodGet, s.systems)
	case path == s.systemPath():
		switch r.Method {
		case http.MethodGet:
			s.getSystem(w, r)
		case http.MethodPatch:
			s.patchSystem(w, r)
		default:
			methodNotAllowed(w, "GET, PATCH")
		}
	case path == s.systemPath()+"/Actions/ComputerSystem.Reset":
		s.only(w, r, http.MethodPost, s.reset)
	case !s.cfg.NoSessions && path == root+"/SessionService":
		s.only(w, r, http.MethodGet, s.sessionService)
	case !s.cfg.NoSessions && path == sessionsURI:
		s.only(w, r, http.MethodGet, s.sessionCollection)
	case !s.cfg.NoSessions && strings.HasPrefix(path, sessionsURI+"/"):
		s.only(w, r, http.MethodDelete, s.logout)
	default:
		writeError(w, http.StatusNotFound, "Base.1.8.ResourceMissingAtURI", "no resource at "+path)
	}
}

func (s *Server) only(w http.ResponseWriter, r *http.Request, method string, h http.HandlerFunc) {
	if r.Method != method {
		methodNotAllowed(w, method)
		return
	}
	h(w, r)
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "Base.1.8.OperationNotAllowed", "method not allowed")
}

func (s *Server) authorized(r *http.Request) bool {
	if tok := r.Header.Get("X-Auth-Token"); tok != "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.sessions[tok]
		return ok
	}
	u, p, ok := r.BasicAuth()
	return ok && s.credentialsOK(u, p)
}

func (s *Server) credentialsOK(u, p string) bool {
	uok := subtle.ConstantTimeCompare([]byte(u), []byte(s.cfg.Username))
	pok := subtle.ConstantTimeCompare([]byte(p), []byte(s.cfg.Password))
	return uok&pok == 1
}

func (s *Server) serviceRoot(w http.ResponseWriter, r *http.Request) {
	doc := map[string]any{
		"@odata.id":      root,
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"Id":             "RootService",
		"Name":           "LPMOS Redfish stand-in (redfishsim, not a real BMC)",
		"RedfishVersion": "1.6.0",
		"Systems":        odataID(systemsPath),
	}
	if !s.cfg.NoSessions {
		doc["SessionService"] = odataID(root + "/SessionService")
		doc["Links"] = map[string]any{"Sessions": odataID(sessionsURI)}
	}
	writeJSON(w, http.StatusOK, doc)
}

func (s *Server) systems(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":           systemsPath,
		"@odata.type":         "#ComputerSystemCollection.ComputerSystemCollection",
		"Name":                "Computer System Collection",
		"Members@odata.count": 1,
		"Members":             []any{odataID(s.systemPath())},
	})
}

func (s *Server) etag() string { return `W/"` + strconv.Itoa(s.generation) + `"` }

func (s *Server) getSystem(w http.ResponseWriter, r *http.Request) {
	state, err := s.backend.PowerState(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Base.1.8.InternalError", err.Error())
		return
	}
	s.mu.Lock()
	etag := s.etag()
	doc := map[string]any{
		"@odata.id":   s.systemPath(),
		"@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
		"@odata.etag": etag,
		"Id":          s.cfg.SystemID,
		"Name":        "redfishsim system",
		"SystemType":  "Physical",
		"PowerState":  state,
		"Boot": map[string]any{
			"BootSourceOverrideTarget":                         s.bootTarget,
			"BootSourceOverrideEnabled":                        s.bootEnabled,
			"BootSourceOverrideTarget@Redfish.AllowableValues": s.cfg.BootTargets,
		},
		"Actions": map[string]any{
			"#ComputerSystem.Reset": map[string]any{
				"target":                            s.systemPath() + "/Actions/ComputerSystem.Reset",
				"ResetType@Redfish.AllowableValues": s.cfg.ResetTypes,
			},
		},
	}
	s.mu.Unlock()
	w.Header().Set("ETag", etag)
	writeJSON(w, http.StatusOK, doc)
}

func (s *Server) patchSystem(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Boot *struct {
			Target  *string `json:"BootSourceOverrideTarget"`
			Enabled *string `json:"BootSourceOverrideEnabled"`
		}
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && m != s.etag() {
		writeError(w, http.StatusPreconditionFailed, "Base.1.8.PreconditionFailed", "ETag does not match")
		return
	}
	if req.Boot == nil {
		writeError(w, http.StatusBadRequest, "Base.1.8.PropertyUnknown", "only Boot can be patched")
		return
	}
	target, enabled := s.bootTarget, s.bootEnabled
	if req.Boot.Target != nil {
		if !slices.Contains(s.cfg.BootTargets, *req.Boot.Target) {
			writeError(w, http.StatusBadRequest, "Base.1.8.PropertyValueNotInList", "BootSourceOverrideTarget "+*req.Boot.Target+" is not allowed")
			return
		}
		target = *req.Boot.Target
	}
	if req.Boot.Enabled != nil {
		if !slices.Contains([]string{"Disabled", "Once", "Continuous"}, *req.Boot.Enabled) {
			writeError(w, http.StatusBadRequest, "Base.1.8.PropertyValueNotInList", "BootSourceOverrideEnabled "+*req.Boot.Enabled+" is not allowed")
			return
		}
		enabled = *req.Boot.Enabled
	}
	s.bootTarget, s.bootEnabled = target, enabled
	s.generation++
	w.WriteHeader(http.StatusNoContent)
}

// bootForStart returns the override target a boot now uses and clears a
// "Once" override. Called with s.mu held.
func (s *Server) bootForStart() string {
	if s.bootEnabled == "Disabled" || s.bootTarget == "None" {
		return ""
	}
	target := s.bootTarget
	if s.bootEnabled == "Once" {
		s.bootTarget, s.bootEnabled = "None", "Disabled"
		s.generation++
	}
	return target
}

func (s *Server) reset(w http.ResponseWriter, r *http.Request) {
	var req struct{ ResetType string }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", err.Error())
		return
	}
	if !slices.Contains(s.cfg.ResetTypes, req.ResetType) {
		writeError(w, http.StatusBadRequest, "Base.1.8.ActionParameterValueNotInList", "ResetType "+req.ResetType+" is not allowed")
		return
	}
	ctx := r.Context()
	s.resetMu.Lock()
	defer s.resetMu.Unlock()
	s.mu.Lock()
	s.resets = append(s.resets, req.ResetType)
	s.mu.Unlock()
	boot := func() string {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.bootForStart()
	}
	state, err := s.backend.PowerState(ctx)
	if err == nil {
		on := state == PowerOn
		switch req.ResetType {
		case "On":
			if !on {
				err = s.backend.PowerOn(ctx, boot())
			}
		case "ForceOff", "GracefulShutdown":
			if on {
				err = s.backend.PowerOff(ctx, req.ResetType == "GracefulShutdown")
			}
		case "ForceRestart", "PowerCycle", "GracefulRestart":
			if on {
				err = s.backend.PowerOff(ctx, req.ResetType == "GracefulRestart")
			}
			if err == nil {
				err = s.backend.PowerOn(ctx, boot())
			}
		default:
			writeError(w, http.StatusBadRequest, "Base.1.8.ActionParameterNotSupported", "ResetType "+req.ResetType+" is not implemented")
			return
		}
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Base.1.8.InternalError", err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req struct{ UserName, Password string }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", err.Error())
		return
	}
	if !s.credentialsOK(req.UserName, req.Password) {
		writeError(w, http.StatusUnauthorized, "Base.1.8.NoValidSession", "invalid credentials")
		return
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	s.mu.Lock()
	s.nextSession++
	id := strconv.Itoa(s.nextSession)
	s.sessions[token] = id
	s.mu.Unlock()
	uri := sessionsURI + "/" + id
	w.Header().Set("X-Auth-Token", token)
	w.Header().Set("Location", uri)
	writeJSON(w, http.StatusCreated, map[string]any{
		"@odata.id":   uri,
		"@odata.type": "#Session.v1_0_0.Session",
		"Id":          id,
		"UserName":    req.UserName,
	})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(strings.TrimSuffix(r.URL.Path, "/"), sessionsURI+"/")
	s.mu.Lock()
	defer s.mu.Unlock()
	for tok, sid := range s.sessions {
		if sid == id {
			delete(s.sessions, tok)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	writeError(w, http.StatusNotFound, "Base.1.8.ResourceMissingAtURI", "no session "+id)
}

func (s *Server) sessionService(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":      root + "/SessionService",
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"Id":             "SessionService",
		"ServiceEnabled": true,
		"Sessions":       odataID(sessionsURI),
	})
}

func (s *Server) sessionCollection(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	members := []any{}
	for _, id := range s.sessions {
		members = append(members, odataID(sessionsURI+"/"+id))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.id":           sessionsURI,
		"@odata.type":         "#SessionCollection.SessionCollection",
		"Members@odata.count": len(members),
		"Members":             members,
	})
}

func odataID(p string) map[string]string { return map[string]string{"@odata.id": p} }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("OData-Version", "4.0")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes a Redfish error response (DSP0266 §9.6).
func writeError(w http.ResponseWriter, status int, id, msg string) {
	writeJSON(w, status, map[string]any{
		"error": map[string]any{
			"code":    id,
			"message": msg,
			"@Message.ExtendedInfo": []any{map[string]any{
				"MessageId": id,
				"Message":   msg,
				"Severity":  "Warning",
			}},
		},
	})
}

// Memory is an in-memory Backend for unit tests: a machine that is on or
// off and remembers how it booted.
type Memory struct {
	mu    sync.Mutex
	on    bool
	boots []string
	// Err, if set, fails every call (a broken machine).
	err error
}

// NewMemory returns a Memory machine that is on or off.
func NewMemory(on bool) *Memory { return &Memory{on: on} }

func (m *Memory) PowerState(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return "", m.err
	}
	if m.on {
		return PowerOn, nil
	}
	return PowerOff, nil
}

func (m *Memory) PowerOn(_ context.Context, boot string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if m.on {
		return fmt.Errorf("redfishsim: power on while on")
	}
	m.on = true
	m.boots = append(m.boots, boot)
	return nil
}

func (m *Memory) PowerOff(context.Context, bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	m.on = false
	return nil
}

// On reports whether the machine is on.
func (m *Memory) On() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.on
}

// Boots lists, one per power-on, the boot override it used ("Pxe",
// "Hdd", or "" for none).
func (m *Memory) Boots() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.boots)
}

// Fail makes every call fail with err (nil heals).
func (m *Memory) Fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
}

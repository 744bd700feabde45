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
// override was "Once", clears it then, as firmware does. A boot is a
// power-on and, for a backend whose machine reboots by itself (a
// Rebooter), also each reset of the running machine: a "Once" override
// set before an operating system reboots applies to that reboot, and one
// spent at power-on does not apply to the reboots after it.
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
	"time"
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

// Rebooter is a Backend whose machine can reset itself while it is on (an
// operating system's reboot). Its firmware sees that reset as a boot like
// any other: the override in force applies to it, and a "Once" override
// is spent by it. The Server tells the backend what the next reset boots
// from and learns of each reset.
type Rebooter interface {
	Backend
	// SetResetBoot sets what the next reset of the running machine boots
	// from ("Pxe", "Hdd", or "" for its own order). The Server calls it
	// after a power-on, after each change of the override and after each
	// reset. A machine that is off ignores it.
	SetResetBoot(ctx context.Context, boot string) error
	// OnReset sets the function the backend calls after each reset of the
	// running machine, with the boot that reset used. The function may
	// call SetResetBoot; the backend must not hold a lock SetResetBoot
	// takes while it calls it.
	OnReset(fn func(boot string))
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
	// bootMu orders SetResetBoot calls: each passes the override in force
	// when it is made, so the last one made is the current one.
	bootMu sync.Mutex

	mu          sync.Mutex        // guards the fields below; never held across a backend call
	sessions    map[string]string // token → session ID
	nextSession int
	bootTarget  string // BootSourceOverrideTarget
	bootEnabled string // BootSourceOverrideEnabled: Disabled, Once, Continuous
	generation  int    // bumps on every change; the ETag
	resets      []string
	boots       []string // the override each boot used, "" for none
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
	s := &Server{cfg: cfg, backend: backend, sessions: map[string]string{}, bootTarget: "None", bootEnabled: "Disabled"}
	if rb, ok := backend.(Rebooter); ok {
		rb.OnReset(s.guestReset)
	}
	return s
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

// Boots lists, one per boot (a power-on, or a reset of a Rebooter's
// running machine), the boot override it used ("Pxe", "Hdd", or "" for
// none), in order.
func (s *Server) Boots() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.boots)
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
	var req struct{ Boot *bootPatch }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "Base.1.8.MalformedJSON", err.Error())
		return
	}
	if status, id, msg := s.patchBoot(r, req.Boot); status != 0 {
		writeError(w, status, id, msg)
		return
	}
	if err := s.applyResetBoot(r.Context()); err != nil {
		writeError(w, http.StatusInternalServerError, "Base.1.8.InternalError", err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// bootPatch is the Boot object of a PATCH.
type bootPatch struct {
	Target  *string `json:"BootSourceOverrideTarget"`
	Enabled *string `json:"BootSourceOverrideEnabled"`
}

// patchBoot changes the override, or returns the error's status, Redfish
// message ID and message.
func (s *Server) patchBoot(r *http.Request, boot *bootPatch) (int, string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && m != s.etag() {
		return http.StatusPreconditionFailed, "Base.1.8.PreconditionFailed", "ETag does not match"
	}
	if boot == nil {
		return http.StatusBadRequest, "Base.1.8.PropertyUnknown", "only Boot can be patched"
	}
	target, enabled := s.bootTarget, s.bootEnabled
	if boot.Target != nil {
		if !slices.Contains(s.cfg.BootTargets, *boot.Target) {
			return http.StatusBadRequest, "Base.1.8.PropertyValueNotInList", "BootSourceOverrideTarget " + *boot.Target + " is not allowed"
		}
		target = *boot.Target
	}
	if boot.Enabled != nil {
		if !slices.Contains([]string{"Disabled", "Once", "Continuous"}, *boot.Enabled) {
			return http.StatusBadRequest, "Base.1.8.PropertyValueNotInList", "BootSourceOverrideEnabled " + *boot.Enabled + " is not allowed"
		}
		enabled = *boot.Enabled
	}
	s.bootTarget, s.bootEnabled = target, enabled
	s.generation++
	return 0, "", ""
}

// pendingBoot returns the override target the next boot would use, ""
// for none. Called with s.mu held.
func (s *Server) pendingBoot() string {
	if s.bootEnabled == "Disabled" || s.bootTarget == "None" {
		return ""
	}
	return s.bootTarget
}

// bootForStart returns the override target a power-on now uses, clears a
// "Once" override and records the boot. Called with s.mu held.
func (s *Server) bootForStart() string {
	target := s.pendingBoot()
	s.spend(target)
	return target
}

// spend records a boot that used target and clears a "Once" override
// for it. Called with s.mu held.
func (s *Server) spend(target string) {
	s.boots = append(s.boots, target)
	if target != "" && s.bootEnabled == "Once" && s.bootTarget == target {
		s.bootTarget, s.bootEnabled = "None", "Disabled"
		s.generation++
	}
}

// guestReset is a Rebooter's machine resetting by itself with boot: a
// boot like a power-on's.
func (s *Server) guestReset(boot string) {
	s.mu.Lock()
	s.spend(boot)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), resetBootTimeout)
	defer cancel()
	_ = s.applyResetBoot(ctx) // a machine that went off meanwhile ignores it
}

// resetBootTimeout bounds telling a Rebooter its next reset's boot after
// one of its resets (no request's context then).
const resetBootTimeout = 10 * time.Second

// applyResetBoot tells a Rebooter what its running machine's next reset
// boots from: the override in force now.
func (s *Server) applyResetBoot(ctx context.Context) error {
	rb, ok := s.backend.(Rebooter)
	if !ok {
		return nil
	}
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	s.mu.Lock()
	boot := s.pendingBoot()
	s.mu.Unlock()
	return rb.SetResetBoot(ctx, boot)
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
	if err == nil && slices.Contains([]string{"On", "ForceRestart", "PowerCycle", "GracefulRestart"}, req.ResetType) {
		err = s.applyResetBoot(ctx) // what the new boot's reboots use
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

// Memory is an in-memory Backend (a Rebooter) for unit tests: a machine
// that is on or off, reboots when told (Reboot) and remembers how it
// booted.
type Memory struct {
	mu        sync.Mutex
	on        bool
	boots     []string
	resetBoot string
	onReset   func(boot string)
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
	m.resetBoot = boot
	return nil
}

func (m *Memory) SetResetBoot(_ context.Context, boot string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if m.on {
		m.resetBoot = boot
	}
	return nil
}

func (m *Memory) OnReset(fn func(boot string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onReset = fn
}

// Reboot resets the running machine, as its operating system's reboot
// does: it boots from what SetResetBoot last said. A machine that is off
// does nothing.
func (m *Memory) Reboot() {
	m.mu.Lock()
	if !m.on {
		m.mu.Unlock()
		return
	}
	boot, fn := m.resetBoot, m.onReset
	m.boots = append(m.boots, boot)
	m.mu.Unlock()
	if fn != nil {
		fn(boot)
	}
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

// Boots lists, one per power-on or reboot, the boot override it used
// ("Pxe", "Hdd", or "" for none).
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

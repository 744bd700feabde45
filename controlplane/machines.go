package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/task"
)

// CodeNoBMC answers a power action for a machine without a BMC.
const CodeNoBMC = "no_bmc"

// machineErr maps the machine service's errors to API errors; others pass
// through to httpjson's mapping.
func machineErr(err error) error {
	var ve *machine.ValidationError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ve):
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: err.Error(), Field: ve.Field}
	case errors.Is(err, machine.ErrNotFound):
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "%v", err)
	case errors.Is(err, machine.ErrNoBMC):
		return httpjson.Errorf(http.StatusConflict, CodeNoBMC, "%v: set one with PATCH /api/v1/machines/{mac}", err)
	case errors.Is(err, machine.ErrConflict):
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeConflict, "%v", err)
	}
	return err
}

func pathMAC(r *http.Request) (lpmos.MAC, error) {
	mac, err := lpmos.ParseMAC(r.PathValue("mac"))
	if err != nil {
		return mac, &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: err.Error(), Field: "mac"}
	}
	return mac, nil
}

// machineFilter reads GET /api/v1/machines' query.
func machineFilter(q url.Values) (machine.Filter, error) {
	bad := func(field, format string, args ...any) error {
		return &machine.ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	known := map[string]bool{"region": true, "tag": true, "min_cores": true, "min_memory_gb": true, "min_disk_gb": true,
		"vendor": true, "model": true, "mac_prefix": true, "limit": true, "after": true}
	for k := range q {
		if !known[k] {
			return machine.Filter{}, bad(k, "unknown query parameter")
		}
	}
	f := machine.Filter{Region: q.Get("region"), Vendor: q.Get("vendor"), Model: q.Get("model")}
	for _, t := range q["tag"] {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return f, bad("tag", "want key=value, got %q", t)
		}
		if f.Tags == nil {
			f.Tags = map[string]string{}
		}
		f.Tags[k] = v
	}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"min_cores", &f.MinCores}, {"min_memory_gb", &f.MinMemoryGB}, {"min_disk_gb", &f.MinDiskGB}, {"limit", &f.Limit}} {
		if s := q.Get(p.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return f, bad(p.name, "want a whole number ≥ 0, got %q", s)
			}
			*p.dst = n
		}
	}
	if f.Limit > machine.MaxMachinesPage {
		return f, bad("limit", "at most %d", machine.MaxMachinesPage)
	}
	if p := q.Get("mac_prefix"); p != "" {
		norm := strings.ToLower(strings.ReplaceAll(p, "-", ":"))
		if len(norm) > 17 || strings.Trim(norm, "0123456789abcdef:") != "" {
			return f, bad("mac_prefix", "want the start of a MAC, e.g. 52:54:00")
		}
		f.MACPrefix = norm
	}
	if a := q.Get("after"); a != "" {
		mac, err := lpmos.ParseMAC(a)
		if err != nil {
			return f, bad("after", "%v", err)
		}
		f.After = mac
	}
	return f, nil
}

func (s *Server) machinesSynced() bool {
	select {
	case <-s.mview.Synced():
		return true
	default:
		return false
	}
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) error {
	f, err := machineFilter(r.URL.Query())
	if err != nil {
		return machineErr(err)
	}
	if !s.machinesSynced() {
		w.Header().Set("Retry-After", "1")
		return httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable, "machine cache is loading")
	}
	httpjson.WriteJSON(w, http.StatusOK, s.mview.List(f))
	return nil
}

// machineTask is a task of a machine, as its detail lists them.
type machineTask struct {
	TaskID    string      `json:"task_id"`
	Status    task.Status `json:"status"`
	OSType    string      `json:"os_type"`
	OSVersion string      `json:"os_version"`
	CreatedAt time.Time   `json:"created_at"`
}

type machineDetail struct {
	*machine.Machine
	// Tasks are the machine's newest tasks, newest first.
	Tasks []machineTask `json:"tasks"`
}

// maxMachineTasks bounds the tasks a machine's detail lists.
const maxMachineTasks = 20

// machine returns a machine's record from the view, or from the store when
// the view does not have it yet, so that a client sees its own create at
// once.
func (s *Server) machine(r *http.Request, mac lpmos.MAC) (*machine.Machine, error) {
	if m, err := s.mview.Get(mac); err == nil {
		return m, nil
	}
	m, err := s.machines.Get(r.Context(), mac)
	return m, machineErr(err)
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	m, err := s.machine(r, mac)
	if err != nil {
		return err
	}
	d := machineDetail{Machine: m, Tasks: []machineTask{}}
	for _, t := range s.view.List(task.Filter{MAC: mac, Limit: maxMachineTasks}).Tasks {
		d.Tasks = append(d.Tasks, machineTask{TaskID: t.ID, Status: t.Status, OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion, CreatedAt: t.Metadata.CreatedAt})
	}
	httpjson.WriteJSON(w, http.StatusOK, d)
	return nil
}

// machineBody is the JSON of POST and PATCH: "bmc": null removes the
// BMC, "expected": null the expected hardware.
type machineBody struct {
	MAC      string            `json:"mac,omitempty"`
	Region   *string           `json:"region,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	BMC      json.RawMessage   `json:"bmc,omitempty"`
	Expected json.RawMessage   `json:"expected,omitempty"`
}

func (b *machineBody) patch(actor string) (machine.Patch, error) {
	p := machine.Patch{Region: b.Region, Tags: b.Tags, Actor: actor}
	switch raw := bytes.TrimSpace(b.BMC); {
	case len(raw) == 0:
	case string(raw) == "null":
		p.RemoveBMC = true
	default:
		var in machine.BMCInput
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return p, &machine.ValidationError{Field: "bmc", Reason: "want an object with driver, address, username, password, cert_sha256, ca_cert: " + jsonReason(err)}
		}
		p.BMC = &in
	}
	switch raw := bytes.TrimSpace(b.Expected); {
	case len(raw) == 0:
	case string(raw) == "null":
		p.RemoveExpected = true
	default:
		var e hardware.Expected
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return p, &machine.ValidationError{Field: "expected", Reason: "want an object with cores, memory_gb, disks, vendor, model, serial: " + jsonReason(err)}
		}
		p.Expected = &e
	}
	return p, nil
}

// jsonReason says what a JSON decoding error found without echoing input
// (a BMC object carries a password).
func jsonReason(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "field " + te.Field + " has the wrong type"
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field") {
		return msg
	}
	return "malformed"
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) error {
	var b machineBody
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	mac, err := lpmos.ParseMAC(b.MAC)
	if err != nil {
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: err.Error(), Field: "mac"}
	}
	p, err := b.patch(principal(r).Subject)
	if err != nil {
		return machineErr(err)
	}
	m, err := s.machines.Create(r.Context(), mac, p)
	if err != nil {
		return machineErr(err)
	}
	w.Header().Set("Location", "/api/v1/machines/"+mac.String())
	httpjson.WriteJSON(w, http.StatusCreated, m)
	return nil
}

func (s *Server) patchMachine(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	var b machineBody
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	if b.MAC != "" {
		if other, err := lpmos.ParseMAC(b.MAC); err != nil || other != mac {
			return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: "a machine's MAC cannot change; leave mac out", Field: "mac"}
		}
	}
	p, err := b.patch(principal(r).Subject)
	if err != nil {
		return machineErr(err)
	}
	m, err := s.machines.Update(r.Context(), mac, p, false)
	if err != nil {
		return machineErr(err)
	}
	httpjson.WriteJSON(w, http.StatusOK, m)
	return nil
}

func (s *Server) deleteMachine(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	if t, _, ok := s.view.Active(mac); ok {
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeConflict, "machine %s has active task %s; cancel it first", mac, t.ID)
	}
	if err := s.machines.Delete(r.Context(), mac); err != nil {
		return machineErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type powerRequest struct {
	Action string `json:"action"`
}

func (s *Server) powerMachine(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	var b powerRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &b); err != nil {
		return err
	}
	req, err := s.machines.RequestPower(r.Context(), mac, b.Action, principal(r).Subject)
	if err != nil {
		return machineErr(err)
	}
	// Accepted: the machine's region carries it out and records the
	// outcome in the machine's power field.
	httpjson.WriteJSON(w, http.StatusAccepted, req)
	return nil
}

// createMachineTask creates a task for a registered or discovered machine:
// the body is a task create request whose target MAC is the machine's and
// whose region defaults to the machine's.
func (s *Server) createMachineTask(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	m, err := s.machine(r, mac)
	if err != nil {
		return err
	}
	return s.create(w, r, func(req *task.CreateRequest) error {
		if req.TargetMAC != "" {
			if other, err := lpmos.ParseMAC(req.TargetMAC); err != nil || other != mac {
				return &task.ValidationError{Field: "target_mac", Reason: "is the machine's; leave it out"}
			}
		}
		req.TargetMAC = mac.String()
		if req.RegionID == "" {
			req.RegionID = m.Region
		}
		return nil
	})
}

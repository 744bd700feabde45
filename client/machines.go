package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// MachineFilter selects machines (GET /api/v1/machines); zero fields
// select everything.
type MachineFilter struct {
	Region string
	// Tags must all be present with these values.
	Tags map[string]string
	// MinCores, MinMemoryGB and MinDiskGB (one disk at least this big)
	// are read from the last hardware report.
	MinCores, MinMemoryGB, MinDiskGB int
	// Vendor and Model are substrings of the system's vendor and product
	// name, without regard to case.
	Vendor, Model string
	// MACPrefix is the start of a MAC ("52:54:00").
	MACPrefix string
	// Limit bounds a page (server default and maximum 500); After is the
	// previous page's Next.
	Limit int
	After string
}

func (f MachineFilter) query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	num := func(k string, v int) {
		if v != 0 {
			q.Set(k, strconv.Itoa(v))
		}
	}
	set("region", f.Region)
	for k, v := range f.Tags {
		q.Add("tag", k+"="+v)
	}
	num("min_cores", f.MinCores)
	num("min_memory_gb", f.MinMemoryGB)
	num("min_disk_gb", f.MinDiskGB)
	set("vendor", f.Vendor)
	set("model", f.Model)
	set("mac_prefix", f.MACPrefix)
	num("limit", f.Limit)
	set("after", f.After)
	return q
}

// Machines returns a page of machines, sorted by MAC. Page.Next, when
// set, is the After of the next page.
func (c *Client) Machines(ctx context.Context, f MachineFilter) (*machine.Page, error) {
	var out machine.Page
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/machines", f.query(), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// MachineTask is one of a machine's tasks, as its detail lists them.
type MachineTask struct {
	TaskID    string      `json:"task_id"`
	Status    task.Status `json:"status"`
	OSType    string      `json:"os_type"`
	OSVersion string      `json:"os_version"`
	CreatedAt time.Time   `json:"created_at"`
}

// MachineDetail is a machine's record and its newest tasks, newest first.
type MachineDetail struct {
	machine.Machine
	Tasks []MachineTask `json:"tasks"`
}

func machinePath(mac string) string { return "/api/v1/machines/" + url.PathEscape(mac) }

// MachineTrace is a machine's boot trace: what each region saw of it
// (DHCP, TFTP, HTTP boot, scripts, agent calls, power), oldest first.
type MachineTrace struct {
	MAC    string        `json:"mac"`
	Events []trace.Event `json:"events"`
}

// MachineTrace returns a machine's boot trace. Any well-formed MAC has
// one, known to LPMOS or not; an empty trace means no region has heard
// from the machine.
func (c *Client) MachineTrace(ctx context.Context, mac string) (*MachineTrace, error) {
	var out MachineTrace
	if _, err := c.call(ctx, http.MethodGet, machinePath(mac)+"/trace", nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Machine returns a machine's record and its newest tasks.
func (c *Client) Machine(ctx context.Context, mac string) (*MachineDetail, error) {
	var out MachineDetail
	if _, err := c.call(ctx, http.MethodGet, machinePath(mac), nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// MachineInput is a machine's operator record as a register or an update
// sends it: nil fields are left as they are. RemoveBMC and RemoveExpected
// remove them (sent as null).
type MachineInput struct {
	Region         *string
	Tags           map[string]string
	BMC            *machine.BMCInput
	RemoveBMC      bool
	Expected       *hardware.Expected
	RemoveExpected bool
}

func (in MachineInput) body(mac string) map[string]any {
	b := map[string]any{}
	if mac != "" {
		b["mac"] = mac
	}
	if in.Region != nil {
		b["region"] = *in.Region
	}
	if in.Tags != nil {
		b["tags"] = in.Tags
	}
	switch {
	case in.RemoveBMC:
		b["bmc"] = json.RawMessage("null")
	case in.BMC != nil:
		b["bmc"] = in.BMC
	}
	switch {
	case in.RemoveExpected:
		b["expected"] = json.RawMessage("null")
	case in.Expected != nil:
		b["expected"] = in.Expected
	}
	return b
}

// RegisterMachine creates a machine's operator record (POST
// /api/v1/machines); ErrConflict if it is registered already (a machine
// only discovered can be registered).
func (c *Client) RegisterMachine(ctx context.Context, mac string, in MachineInput) (*machine.Machine, error) {
	var out machine.Machine
	if _, err := c.call(ctx, http.MethodPost, "/api/v1/machines", nil, nil, in.body(mac), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateMachine changes a machine's operator record (PATCH
// /api/v1/machines/{mac}).
func (c *Client) UpdateMachine(ctx context.Context, mac string, in MachineInput) (*machine.Machine, error) {
	var out machine.Machine
	if _, err := c.call(ctx, http.MethodPatch, machinePath(mac), nil, nil, in.body(""), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteMachine removes a machine's record; ErrConflict while it has an
// active task.
func (c *Client) DeleteMachine(ctx context.Context, mac string) error {
	_, err := c.call(ctx, http.MethodDelete, machinePath(mac), nil, nil, nil, nil)
	return err
}

// PowerMachine asks the machine's region to power it "on", "off" or
// "cycle" through its BMC. The request is accepted, not done: the region
// records the outcome in the machine's Power field.
func (c *Client) PowerMachine(ctx context.Context, mac, action string) (*machine.PowerRequest, error) {
	var out machine.PowerRequest
	if _, err := c.call(ctx, http.MethodPost, machinePath(mac)+"/power", nil, nil, map[string]string{"action": action}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateForMachine asks for an install on a known machine (POST
// /api/v1/machines/{mac}/tasks): req without TargetMAC; RegionID
// defaults to the machine's.
func (c *Client) CreateForMachine(ctx context.Context, mac string, req task.CreateRequest) (*Created, error) {
	var out Created
	if _, err := c.call(ctx, http.MethodPost, machinePath(mac)+"/tasks", nil, nil, req, &out); err != nil {
		return nil, err
	}
	if out.TaskID == "" {
		return nil, fmt.Errorf("POST %s/tasks: %w", machinePath(mac), errNoBody)
	}
	return &out, nil
}

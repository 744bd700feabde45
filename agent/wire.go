// Package agent is the LPMOS agent: the small program a machine runs from
// RAM after PXE-booting, which collects the hardware, reports it to its
// region, waits for an operator's approval and installs the operating
// system with progress. This file is the agent API's wire protocol, shared
// by the agent and the region's handlers (region/agentapi.go); the region
// imports these types and nothing else of the agent.
//
// The agent authenticates every call with "Authorization: Bearer <token>",
// the per-task token the region put on its kernel command line
// (lpmos.token=...).
package agent

import (
	"time"

	"github.com/lpmos/lpmos/hardware"
)

// API paths on the region's HTTP server.
const (
	PathReport   = "/api/v1/agent/report"
	PathProgress = "/api/v1/agent/progress"
	PathStatus   = "/api/v1/agent/status"
	// PathApproval is followed by the MAC: GET /api/v1/agent/approval/{mac}.
	PathApproval = "/api/v1/agent/approval/"
	PathHealth   = "/health"
	// PathPhoneHome is followed by the task ID: the installed system's
	// first boot reports there (POST, cloud-init phone_home style), with
	// the task's agent token in the token query parameter.
	PathPhoneHome = "/api/v1/agent/phone-home/"
	// PathInventory takes the hardware report of a machine without a
	// task (ModeInventory); the answer is always to power off.
	PathInventory = "/api/v1/agent/inventory"
)

// MaxBodyBytes bounds an agent request body (hardware reports of large
// servers included).
const MaxBodyBytes = 1 << 20

// ReportRequest is the hardware report (POST PathReport).
type ReportRequest struct {
	MACAddress string        `json:"mac_address"`
	TaskID     string        `json:"task_id,omitempty"`
	Hardware   hardware.Info `json:"hardware"`
}

// Next actions a region tells an agent.
const (
	ActionWaitForApproval = "wait_for_approval"
	ActionInstall         = "install"
	ActionPowerOff        = "poweroff"
)

// ReportResponse answers a hardware report.
type ReportResponse struct {
	Status     string `json:"status"` // "received"
	TaskID     string `json:"task_id"`
	NextAction string `json:"next_action"`
}

// ProgressRequest reports install progress (POST PathProgress). Stage is
// one of partitioning, downloading, writing, installing, configuring,
// completed; a "completed" stage at 100% completes the task.
type ProgressRequest struct {
	MACAddress string         `json:"mac_address"`
	TaskID     string         `json:"task_id"`
	Stage      string         `json:"stage"`
	Percentage int            `json:"percentage"`
	Message    string         `json:"message,omitempty"`
	Details    map[string]any `json:"details,omitempty"`
}

// StatusRequest reports an outcome that is not progress (POST PathStatus):
// "failed" with an error code, stage and message, or "completed".
type StatusRequest struct {
	MACAddress string `json:"mac_address"`
	TaskID     string `json:"task_id"`
	Status     string `json:"status"`
	Stage      string `json:"stage,omitempty"`
	Code       string `json:"code,omitempty"`
	Message    string `json:"message,omitempty"`
}

// ApprovalResponse answers the approval long-poll. Until a decision,
// Approved is false and Status is "pending_approval"; on approval Plan says
// what to install; on rejection or cancellation NextAction is "poweroff".
type ApprovalResponse struct {
	Approved   bool   `json:"approved"`
	TaskID     string `json:"task_id"`
	Status     string `json:"status"`
	NextAction string `json:"next_action"`
	Reason     string `json:"reason,omitempty"`
	Plan       *Plan  `json:"plan,omitempty"`
}

// Plan is the install plan of an approved task.
type Plan struct {
	TaskID    string `json:"task_id"`
	OSType    string `json:"os_type"`
	OSVersion string `json:"os_version"`
	// Method is "image" (write ImageURL to Disk) or "installer" (reboot
	// into the distribution installer the region's script provides).
	Method string `json:"method"`
	// ImageURL is the disk image, possibly compressed (.gz, .xz, .zst);
	// SHA256 is the hex digest of the bytes as served.
	ImageURL string `json:"image_url,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	// ImageSize is the size as served, if known (for progress).
	ImageSize int64 `json:"image_size,omitempty"`
	// Disk is "auto" or a device path.
	Disk string `json:"disk"`
	// Hostname and SSHAuthorizedKeys seed cloud-init (NoCloud), if set.
	Hostname          string   `json:"hostname,omitempty"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	Network           string   `json:"network_config,omitempty"`
	// PhoneHomeURL, if set, is where the installed system reports its
	// first boot; the image installer puts it into the cloud-init NoCloud
	// seed it writes (phone_home). Empty: no seed unless Hostname or
	// SSHAuthorizedKeys ask for one.
	PhoneHomeURL string `json:"phone_home_url,omitempty"`
	// SeedUserData and SeedNetworkConfig, when set, are the NoCloud
	// seed's user-data and network-config files as the region rendered
	// them (with the task's static network, VLAN or bond, root password
	// hash and the operator's user-data); the image installer writes
	// them as they are. Without SeedUserData the installer builds
	// user-data from Hostname, SSHAuthorizedKeys and PhoneHomeURL, as
	// for regions that predate these fields; without SeedNetworkConfig
	// the seed has no network-config and cloud-init uses DHCP.
	SeedUserData      string `json:"seed_user_data,omitempty"`
	SeedNetworkConfig string `json:"seed_network_config,omitempty"`
}

// CodeStandby is the error code of a region process that is its
// region's standby (503): the leader is another process, so an agent
// with the region's other URLs turns to the next.
const CodeStandby = "standby"

// Health is the region's GET /health answer.
type Health struct {
	Status        string            `json:"status"` // "healthy" or "degraded"
	RegionID      string            `json:"region_id"`
	Services      map[string]string `json:"services"`
	EtcdConnected bool              `json:"etcd_connected"`
	LastHeartbeat time.Time         `json:"last_heartbeat,omitzero"`
	// Role is "leader" or "standby": of the processes that run a region,
	// only the leader answers machines. Instance names this process,
	// Leader the one that leads ("" while none does).
	Role     string `json:"role,omitempty"`
	Instance string `json:"instance,omitempty"`
	Leader   string `json:"leader,omitempty"`
	// CutOff: this process led its region until it lost the store, and
	// serves the agents of its tasks in flight from its journal; Journal
	// is the number of agent calls journaled and not yet applied to the
	// store. Either makes Status "degraded".
	CutOff  bool `json:"cut_off,omitempty"`
	Journal int  `json:"journal,omitempty"`
}

// Error is the body of a refused agent request, the same shape as the
// control plane's API errors. Code is what a client may branch on besides
// the status (invalid_request, unauthorized, not_found,
// invalid_transition, conflict, too_large, unsupported_media_type,
// internal, starting); Field names the offending input when known.
type Error struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
	} `json:"error"`
}

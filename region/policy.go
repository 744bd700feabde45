package region

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Unknown-machine handling in DHCP.
const (
	// UnknownIgnore: machines without an active task get no answer, so
	// they fall through to their next boot device (the default).
	UnknownIgnore = "ignore"
	// UnknownRecord: also record them under /lpmos/agents/{mac}/info as
	// discovered, so an operator can create tasks for them.
	UnknownRecord = "record"
	// UnknownDiscover: boot them into the agent in inventory mode: it
	// reports the hardware into the machine's record
	// (/lpmos/machines/{mac}) and powers off (inventory.go).
	UnknownDiscover = "discover"
)

// discovered is the record of a machine that asked to boot without a task.
type discovered struct {
	Discovered bool      `json:"discovered"`
	Firmware   string    `json:"firmware,omitempty"`
	RelayAddr  string    `json:"relay_addr,omitempty"`
	SeenAt     time.Time `json:"seen_at"`
}

// DHCPPolicy answers only machines with an active task in this region:
// firmware gets the iPXE binary for its kind (over TFTP, or over HTTP for
// UEFI HTTP boot), iPXE gets the URL of its machine's script. A machine
// whose task recently ended is still answered, so that its script can send
// it to its disk (completed) or power it off (rejected). Everyone else is
// ignored (and recorded, if configured).
//
// The URLs are built from Config.FirmwareURL (UEFI HTTP boot) and
// Config.BootURL (iPXE), both PublicURL unless the region serves TLS; the policy has a Validate method, so dhcp.New
// rejects a public URL DHCP could not hand out.
func (r *Region) DHCPPolicy() dhcp.BootPolicy {
	return &dhcpPolicy{r: r, static: dhcp.StaticPolicy{
		HTTPBaseURL: r.cfg.FirmwareURL + ipxeRoute,
		// iPXE expands ${platform} (pcbios or efi) in the file name it is
		// given; the script uses it to pick how to boot the local disk.
		ScriptURL: r.cfg.BootURL + "/boot/{mac}.ipxe?platform=${platform}",
	}}
}

// dhcpPolicy is the region's dhcp.BootPolicy: the task view decides who is
// answered, static what they are told.
type dhcpPolicy struct {
	r      *Region
	static dhcp.StaticPolicy
}

// Boot implements dhcp.BootPolicy.
func (p *dhcpPolicy) Boot(ctx context.Context, req dhcp.Request) (dhcp.Decision, error) {
	r := p.r
	_, _, active := r.tasks.Active(req.MAC)
	_, ended := r.ended(req.MAC)
	if !active && !ended {
		switch r.cfg.UnknownMachines {
		case UnknownDiscover:
			r.relays.note(req.MAC, req.RelayAddr != nil)
			return p.static.Boot(ctx, req)
		case UnknownRecord:
			r.recordDiscovered(ctx, req)
			return dhcp.Decision{Ignore: true, Reason: "no active task for this machine in region " + r.cfg.RegionID +
				" (recorded as discovered; unknown machines are not booted)"}, nil
		}
		return dhcp.Decision{Ignore: true, Reason: "no active task for this machine in region " + r.cfg.RegionID +
			" (unknown machines are ignored)"}, nil
	}
	r.relays.note(req.MAC, req.RelayAddr != nil)
	return p.static.Boot(ctx, req)
}

// Validate reports a public URL that cannot be handed out in DHCP answers;
// dhcp.New calls it.
func (p *dhcpPolicy) Validate() error {
	if err := p.static.Validate(); err != nil {
		return fmt.Errorf("region public URL %q (boot URL %q, firmware URL %q): %w", p.r.cfg.PublicURL, p.r.cfg.BootURL, p.r.cfg.FirmwareURL, err)
	}
	return nil
}

// recordDiscovered notes an unknown machine, at most once a minute each,
// so a DHCP storm costs the store little.
func (r *Region) recordDiscovered(ctx context.Context, req dhcp.Request) {
	r.lastSeenMu.Lock()
	now := r.cfg.Now()
	key := req.MAC
	due := now.Sub(r.discoveredAt[key]) >= time.Minute
	if due {
		if len(r.discoveredAt) > 100_000 {
			r.discoveredAt = map[lpmos.MAC]time.Time{}
		}
		r.discoveredAt[key] = now
	}
	r.lastSeenMu.Unlock()
	if !due {
		return
	}
	d := discovered{Discovered: true, Firmware: string(req.Firmware), SeenAt: now.UTC()}
	if req.RelayAddr != nil {
		d.RelayAddr = req.RelayAddr.String()
	}
	b, _ := json.Marshal(d)
	if _, err := r.cfg.Store.Txn(ctx, store.Txn{If: r.lead.Compares(), Then: []store.Op{store.OpPut(task.AgentKey(req.MAC, task.AgentFieldInfo), b)}}); err != nil {
		r.log.Warn("record discovered machine", "mac", req.MAC.String(), "err", err)
	}
	r.tokens.forget(req.MAC) // the token record, if any, was replaced
}

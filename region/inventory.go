package region

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/ipxe"
	"github.com/lpmos/lpmos/machine"
)

// Discovery (Config.UnknownMachines = UnknownDiscover), MAAS's
// enlistment: a machine without a task that PXE-boots gets the agent in
// inventory mode, reports its hardware into its machine record and powers
// off. Its token is not stored: it is an HMAC, under a key of this
// process, of the MAC, the address it is bound to (bindAddr, as for task
// tokens) and an expiry, so that a script fetch for an unknown machine
// writes nothing. A token issued by a process that has since lost the
// leadership does not work at the new leader; the agent's report then
// fails and the machine reboots into a new script.
//
// Anyone on the provisioning network can enlist a MAC, as with MAAS; what
// bounds it is the token's address binding (in full mode the leased
// address), a write budget per MAC and per source address, and the
// source address recorded with every report.
const (
	inventoryTokenTTL = 30 * time.Minute
	// A machine's record is rewritten at most this often from inventory
	// reports; a source address may write a burst of
	// inventorySourceBurst, then inventorySourceRate a second.
	inventoryMACEvery    = 30 * time.Second
	inventorySourceRate  = 2
	inventorySourceBurst = 50
	inventoryTokenPrefix = "inv."
)

// inventory issues and checks inventory tokens and bounds the writes.
type inventory struct {
	key       [32]byte
	perMAC    *keyedLimiter[lpmos.MAC]
	perSource *keyedLimiter[netip.Addr]
}

func newInventory() *inventory {
	inv := &inventory{
		perMAC:    newKeyedLimiter[lpmos.MAC](rate.Every(inventoryMACEvery), 1),
		perSource: newKeyedLimiter[netip.Addr](inventorySourceRate, inventorySourceBurst),
	}
	if _, err := rand.Read(inv.key[:]); err != nil {
		panic("region: no randomness for the inventory key: " + err.Error())
	}
	return inv
}

func (inv *inventory) sum(mac lpmos.MAC, bound netip.Addr, expiry []byte) []byte {
	h := hmac.New(sha256.New, inv.key[:])
	h.Write([]byte(mac.String()))
	h.Write([]byte{0})
	h.Write([]byte(bound.String()))
	h.Write([]byte{0})
	h.Write(expiry)
	return h.Sum(nil)[:20]
}

func (inv *inventory) issue(mac lpmos.MAC, bound netip.Addr, now time.Time) string {
	exp := binary.BigEndian.AppendUint64(nil, uint64(now.Add(inventoryTokenTTL).Unix()))
	enc := base64.RawURLEncoding
	return inventoryTokenPrefix + enc.EncodeToString(exp) + "." + enc.EncodeToString(inv.sum(mac, bound, exp))
}

// valid reports whether token is an unexpired inventory token for mac
// bound to from.
func (inv *inventory) valid(token string, mac lpmos.MAC, from netip.Addr, now time.Time) bool {
	rest, ok := strings.CutPrefix(token, inventoryTokenPrefix)
	if !ok {
		return false
	}
	e, s, ok := strings.Cut(rest, ".")
	if !ok {
		return false
	}
	enc := base64.RawURLEncoding
	exp, err1 := enc.DecodeString(e)
	sum, err2 := enc.DecodeString(s)
	if err1 != nil || err2 != nil || len(exp) != 8 {
		return false
	}
	if now.Unix() > int64(binary.BigEndian.Uint64(exp)) {
		return false
	}
	return hmac.Equal(sum, inv.sum(mac, from, exp))
}

// inventoryScript boots the agent in inventory mode for an unknown
// machine.
func (r *Region) inventoryScript(req *http.Request, mac lpmos.MAC) ([]byte, error) {
	from := sourceAddr(req)
	if !r.fetches.perSource.allow(from, r.cfg.Now()) {
		return nil, errTooManyFetches
	}
	// A machine inventoried before boots its disk: discovery runs once per
	// machine (delete its record, or give it a task, to boot it again), so
	// an installed server whose boot order puts the network first is not
	// powered off at every reboot.
	if known, err := r.machines.Reported(req.Context(), mac); err != nil {
		return nil, err
	} else if known {
		return ipxe.LocalBoot(ipxe.LocalParams{MAC: mac, Inventoried: true, Firmware: platform(req)})
	}
	base := r.cfg.BootURL + "/boot/files/"
	return ipxe.Agent(ipxe.AgentParams{
		MAC: mac, Inventory: true, Token: r.inventory.issue(mac, r.bindAddr(mac, from), r.cfg.Now()),
		RegionURL: r.cfg.PublicURL, OtherRegionURLs: r.otherRegionURLs(), RegionCertSHA256: r.cfg.RegionCertSHA256, KernelURL: base + r.cfg.AgentKernel, InitrdURL: base + r.cfg.AgentInitrd,
		Consoles: r.cfg.AgentConsoles, ExtraArgs: r.cfg.AgentExtraArgs,
	})
}

// inventoryReport records the hardware an inventory agent reports and
// tells it to power off.
func (r *Region) inventoryReport(w http.ResponseWriter, req *http.Request) error {
	if r.cfg.UnknownMachines != UnknownDiscover {
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "this region does not discover machines (--unknown-machines discover)")
	}
	var body agent.ReportRequest
	if err := httpjson.Decode(w, req, agent.MaxBodyBytes, &body); err != nil {
		return err
	}
	mac, err := lpmos.ParseMAC(body.MACAddress)
	if err != nil {
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: "mac_address: " + err.Error(), Field: "mac_address"}
	}
	noteCaller(req.Context(), mac, "")
	from, now := sourceAddr(req), r.cfg.Now()
	if !r.inventory.valid(httpjson.BearerToken(req), mac, from, now) {
		return errUnauthorized
	}
	if body.TaskID != "" {
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: "an inventory report has no task", Field: "task_id"}
	}
	if body.Hardware.MACAddress == "" {
		body.Hardware.MACAddress = mac.String()
	}
	if err := body.Hardware.Validate(); err != nil {
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: "hardware: " + err.Error(), Field: "hardware"}
	}
	resp := agent.ReportResponse{Status: "received", NextAction: agent.ActionPowerOff}
	if !r.inventory.perMAC.allow(mac, now) {
		// Reported a moment ago (the agent retried): the record stands.
		httpjson.WriteJSON(w, http.StatusOK, resp)
		return nil
	}
	if !r.inventory.perSource.allow(from, now) {
		return errTooManyFetches
	}
	if err := r.machines.Observe(req.Context(), mac, machine.Report{Hardware: &body.Hardware, Region: r.cfg.RegionID, Source: from.String(), At: now.UTC()}); err != nil {
		return err
	}
	r.log.Info("machine inventoried", "mac", mac.String(), "remote", from, "cores", body.Hardware.CPU.Cores, "memory_gb", body.Hardware.Memory.TotalGB)
	httpjson.WriteJSON(w, http.StatusOK, resp)
	return nil
}

package machine

import (
	"strings"

	"github.com/lpmos/lpmos"
)

// Prefix is where every machine record lives.
const Prefix = "/lpmos/machines/"

// The keys of one record, each owned by one writer.
const (
	// keySpec: what the operator says (region, tags, BMC); the control
	// plane writes it.
	keySpec = "spec"
	// keyReport: the last hardware report; the region writes it.
	keyReport = "report"
	// keyPower: the last power action and the state the BMC reported; the
	// region writes it.
	keyPower = "power"
	// keyPowerRequest: an operator's power action waiting for the region
	// (the control plane writes it, the region deletes it once done).
	keyPowerRequest = "power_request"
)

func machinePrefix(mac lpmos.MAC) string { return Prefix + mac.String() + "/" }

func key(mac lpmos.MAC, field string) string { return machinePrefix(mac) + field }

// splitKey parses a key under Prefix into its MAC and field.
func splitKey(k string) (lpmos.MAC, string, bool) {
	rest, ok := strings.CutPrefix(k, Prefix)
	if !ok {
		return lpmos.MAC{}, "", false
	}
	m, field, ok := strings.Cut(rest, "/")
	if !ok {
		return lpmos.MAC{}, "", false
	}
	mac, err := lpmos.ParseMAC(m)
	if err != nil || mac.String() != m {
		return lpmos.MAC{}, "", false
	}
	return mac, field, true
}

// RegionPowerPrefix is a region's queue of operators' power requests, one
// key per machine (/lpmos/regions/{r}/power/{mac}): the region watches
// only its own.
func RegionPowerPrefix(region string) string { return "/lpmos/regions/" + region + "/power/" }

// RegionPowerKey is a machine's entry in its region's queue.
func RegionPowerKey(region string, mac lpmos.MAC) string {
	return RegionPowerPrefix(region) + mac.String()
}

package controlplane

import (
	"net/http"

	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/trace"
)

// machineTrace is the answer of GET /api/v1/machines/{mac}/trace.
type machineTrace struct {
	MAC string `json:"mac"`
	// Events are the machine's boot events from every region that saw it,
	// oldest first (newest last), the last trace.Max per region.
	Events []trace.Event `json:"events"`
}

// getMachineTrace serves a machine's boot trace. Any well-formed MAC has
// one, a machine record or not: the machines an operator most needs it for
// are those DHCP ignored, which have no record, and an empty trace says
// that no region has heard from the machine at all (cabling, VLAN, relay).
// It reads the store, not a cache: traces change up to once a second per
// booting machine and are read only while someone looks.
func (s *Server) getMachineTrace(w http.ResponseWriter, r *http.Request) error {
	mac, err := pathMAC(r)
	if err != nil {
		return err
	}
	events, err := trace.Read(r.Context(), s.cfg.Store, mac)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.WriteJSON(w, http.StatusOK, machineTrace{MAC: mac.String(), Events: events})
	return nil
}

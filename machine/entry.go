package machine

import (
	"encoding/json"
	"maps"

	"github.com/lpmos/lpmos"
)

// entry is one record's decoded keys; a key that does not decode is left
// out (and the record shows less), never fatal to a reader.
type entry struct {
	spec    *spec
	report  *Report
	power   *Power
	request *PowerRequest
}

func (e *entry) set(field string, value []byte) {
	switch field {
	case keySpec:
		var v spec
		e.spec = decode(value, &v)
	case keyReport:
		var v Report
		e.report = decode(value, &v)
	case keyPower:
		var v Power
		e.power = decode(value, &v)
	case keyPowerRequest:
		var v PowerRequest
		e.request = decode(value, &v)
	}
}

func (e *entry) unset(field string) {
	switch field {
	case keySpec:
		e.spec = nil
	case keyReport:
		e.report = nil
	case keyPower:
		e.power = nil
	case keyPowerRequest:
		e.request = nil
	}
}

func (e *entry) empty() bool {
	return e.spec == nil && e.report == nil && e.power == nil && e.request == nil
}

func decode[T any](b []byte, v *T) *T {
	if json.Unmarshal(b, v) != nil {
		return nil
	}
	return v
}

// machine assembles the record the API shows.
func (e *entry) machine(mac lpmos.MAC) *Machine {
	m := &Machine{MAC: mac, LastReport: e.report, Power: e.power, PendingPower: e.request}
	if sp := e.spec; sp != nil {
		m.Registered = true
		m.Region, m.Tags = sp.Region, maps.Clone(sp.Tags)
		m.CreatedAt, m.CreatedBy, m.UpdatedAt, m.UpdatedBy = sp.CreatedAt, sp.CreatedBy, sp.UpdatedAt, sp.UpdatedBy
		if sp.BMC != nil {
			b := sp.BMC.BMC
			b.HasPassword = sp.BMC.PasswordSealed != ""
			m.BMC = &b
		}
		if sp.Expected != nil {
			e := *sp.Expected
			m.Expected = &e
		}
	}
	if e.report != nil {
		m.LastSeen = e.report.At
		if m.Region == "" {
			m.Region = e.report.Region
		}
	}
	if m.CreatedAt.IsZero() && e.report != nil {
		m.CreatedAt = e.report.At // discovered: first known by its report
	}
	return m
}

package redfishsim_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/redfishsim"
)

func TestServer(t *testing.T) {
	sim := redfishsim.New(redfishsim.Config{Username: "u", Password: "p"}, redfishsim.NewMemory(false))
	tests := []struct {
		name, method, path, body string
		user, pass               string
		ifMatch                  string
		want                     int
	}{
		{"root needs no auth", "GET", "/redfish/v1", "", "", "", "", 200},
		{"root with slash", "GET", "/redfish/v1/", "", "", "", "", 200},
		{"systems need auth", "GET", "/redfish/v1/Systems", "", "", "", "", 401},
		{"bad password", "GET", "/redfish/v1/Systems", "", "u", "x", "", 401},
		{"systems", "GET", "/redfish/v1/Systems", "", "u", "p", "", 200},
		{"system", "GET", "/redfish/v1/Systems/1", "", "u", "p", "", 200},
		{"other system", "GET", "/redfish/v1/Systems/2", "", "u", "p", "", 404},
		{"delete system", "DELETE", "/redfish/v1/Systems/1", "", "u", "p", "", 405},
		{"patch boot", "PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}`, "u", "p", "", 204},
		{"patch stale etag", "PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Hdd"}}`, "u", "p", `W/"0"`, 412},
		{"patch bad target", "PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Floppy"}}`, "u", "p", "", 400},
		{"patch garbage", "PATCH", "/redfish/v1/Systems/1", `{`, "u", "p", "", 400},
		{"reset on", "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`, "u", "p", "", 204},
		{"reset unknown", "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"Nmi"}`, "u", "p", "", 400},
		{"login bad", "POST", "/redfish/v1/SessionService/Sessions", `{"UserName":"u","Password":"x"}`, "", "", "", 401},
		{"login", "POST", "/redfish/v1/SessionService/Sessions", `{"UserName":"u","Password":"p"}`, "", "", "", 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			if tt.user != "" {
				req.SetBasicAuth(tt.user, tt.pass)
			}
			if tt.ifMatch != "" {
				req.Header.Set("If-Match", tt.ifMatch)
			}
			rec := httptest.NewRecorder()
			sim.ServeHTTP(rec, req)
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
			if rec.Code >= 400 {
				var e struct{ Error struct{ Code string } }
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
				assert.NotEmpty(t, e.Error.Code, "a Redfish error body")
			}
		})
	}
	target, enabled := sim.Boot()
	assert.Equal(t, "None", target, "the On reset used the Once override")
	assert.Equal(t, "Disabled", enabled)
	assert.Equal(t, 1, sim.Sessions())
}

func TestSessionToken(t *testing.T) {
	sim := redfishsim.New(redfishsim.Config{}, redfishsim.NewMemory(true))
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, httptest.NewRequest("POST", "/redfish/v1/SessionService/Sessions", strings.NewReader(`{"UserName":"admin","Password":"lpmos-redfish"}`)))
	require.Equal(t, http.StatusCreated, rec.Code)
	token, loc := rec.Header().Get("X-Auth-Token"), rec.Header().Get("Location")
	require.NotEmpty(t, token)

	get := func() int {
		req := httptest.NewRequest("GET", "/redfish/v1/Systems/1", nil)
		req.Header.Set("X-Auth-Token", token)
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, req)
		return rec.Code
	}
	assert.Equal(t, 200, get())
	req := httptest.NewRequest("DELETE", loc, nil)
	req.Header.Set("X-Auth-Token", token)
	rec = httptest.NewRecorder()
	sim.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusNoContent, rec.Code)
	assert.Equal(t, 401, get(), "the token ends with its session")
}

// TestOverrideAppliesToReboots: a boot is a power-on or a reboot of the
// running machine; a "Once" override is spent by the first boot after it
// was set, a "Continuous" one by none.
func TestOverrideAppliesToReboots(t *testing.T) {
	m := redfishsim.NewMemory(false)
	sim := redfishsim.New(redfishsim.Config{}, m)
	call := func(method, path, body string) {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.SetBasicAuth("admin", "lpmos-redfish")
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, req)
		require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	}
	override := func(target, enabled string) {
		t.Helper()
		call("PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"`+target+`","BootSourceOverrideEnabled":"`+enabled+`"}}`)
	}
	steps := []struct {
		name        string
		do          func()
		wantBoot    string // the boot the step made
		wantTarget  string // the override after it
		wantEnabled string
	}{
		{"power on with PXE once", func() {
			override("Pxe", "Once")
			call("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`)
		}, "Pxe", "None", "Disabled"},
		{"the reboot after it: own order", m.Reboot, "", "None", "Disabled"},
		{"disk once set while on: the next reboot", func() { override("Hdd", "Once"); m.Reboot() }, "Hdd", "None", "Disabled"},
		{"and not the one after", m.Reboot, "", "None", "Disabled"},
		{"continuous PXE: every reboot", func() { override("Pxe", "Continuous"); m.Reboot() }, "Pxe", "Pxe", "Continuous"},
		{"continuous PXE again", m.Reboot, "Pxe", "Pxe", "Continuous"},
		{"a power cycle too", func() {
			call("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"PowerCycle"}`)
		}, "Pxe", "Pxe", "Continuous"},
	}
	var want []string
	for _, st := range steps {
		st.do()
		want = append(want, st.wantBoot)
		assert.Equal(t, want, m.Boots(), st.name+": the machine's boots")
		assert.Equal(t, want, sim.Boots(), st.name+": the BMC's boots")
		target, enabled := sim.Boot()
		assert.Equal(t, st.wantTarget, target, st.name)
		assert.Equal(t, st.wantEnabled, enabled, st.name)
	}
}

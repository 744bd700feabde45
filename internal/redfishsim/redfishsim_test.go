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

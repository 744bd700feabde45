package controlplane_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/store/memory"
)

// TestJWKSSignIn signs in through the control plane's handler with ID
// tokens an in-process IdP's key set verifies, the role from "groups".
func TestJWKSSignIn(t *testing.T) {
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pub, err := ek.PublicKey.Bytes()
	require.NoError(t, err)
	var fetches atomic.Int64
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		enc := base64.RawURLEncoding.EncodeToString
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{
			{"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "x": enc(pub[1:33]), "y": enc(pub[33:])}}})
	}))
	t.Cleanup(idp.Close)

	cp := startCP(t, memory.New(), func(c *controlplane.Config) {
		c.Auth.JWT = &auth.JWTConfig{JWKSURL: idp.URL, Issuer: "https://idp.example", Audience: "lpmos",
			RoleClaim: "groups", RoleMap: map[string]auth.Role{"ops": auth.RoleOperator, "*": auth.RoleViewer}}
	})
	token := func(groups ...string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "alice", "iss": "https://idp.example", "aud": "lpmos",
			"groups": groups, "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = "ec-1"
		s, err := tok.SignedString(ek)
		require.NoError(t, err)
		return s
	}
	code, body := cp.do("GET", "/api/v1/whoami", token("ops", "staff"), nil)
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "jwt:alice", body["subject"])
	assert.Equal(t, "operator", body["role"])

	code, _ = cp.do("GET", "/api/v1/tasks", token("staff"), nil)
	assert.Equal(t, http.StatusOK, code, "* maps to viewer")
	code, _ = cp.do("POST", "/api/v1/tasks", token("staff"), createBody("52:54:00:00:00:01"))
	assert.Equal(t, http.StatusForbidden, code, "a viewer may not create")
	code, _ = cp.do("GET", "/api/v1/whoami", viewerToken, nil)
	assert.Equal(t, http.StatusOK, code, "static tokens still work")
	assert.Positive(t, fetches.Load())
}

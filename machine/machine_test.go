package machine_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

var stores = []struct {
	name string
	new  func(t testing.TB) store.Store
}{
	{"memory", func(t testing.TB) store.Store {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"etcd", func(t testing.TB) store.Store { return etcdtest.NewStore(t) }},
}

func forEachStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			if s.name == "etcd" && testing.Short() {
				t.Skip("embedded etcd in the full run")
			}
			fn(t, s.new(t))
		})
	}
}

func testSealer(t testing.TB) *machine.Sealer {
	s, err := machine.NewSealer([]byte(strings.Repeat("k", machine.KeySize)))
	require.NoError(t, err)
	return s
}

func mustMAC(t testing.TB, s string) lpmos.MAC {
	m, err := lpmos.ParseMAC(s)
	require.NoError(t, err)
	return m
}

func ptr[T any](v T) *T { return &v }

// dump returns every key and value under the machines prefix.
func dump(t *testing.T, st store.Store) map[string]string {
	res, err := st.List(context.Background(), machine.Prefix, store.ListOptions{})
	require.NoError(t, err)
	out := map[string]string{}
	for _, kv := range res.KVs {
		out[kv.Key] = string(kv.Value)
	}
	return out
}

func TestRegisterSealsPassword(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		svc := machine.NewService(st, machine.Config{Sealer: testSealer(t)})
		mac := mustMAC(t, "52:54:00:12:34:56")
		m, err := svc.Create(ctx, mac, machine.Patch{
			Region: ptr("dc1"), Tags: map[string]string{"rack": "r12"}, Actor: "alice",
			BMC: &machine.BMCInput{Driver: machine.DriverIPMI, Address: "10.0.0.9:623", Username: "admin", Password: "s3cret-pw"},
		})
		require.NoError(t, err)
		assert.True(t, m.Registered)
		assert.Equal(t, "dc1", m.Region)
		require.NotNil(t, m.BMC)
		assert.True(t, m.BMC.HasPassword)
		assert.Equal(t, "alice", m.CreatedBy)

		// Nothing in clear in the store, nor in the record as shown.
		for k, v := range dump(t, st) {
			assert.NotContains(t, v, "s3cret-pw", k)
		}
		b, err := json.Marshal(m)
		require.NoError(t, err)
		assert.NotContains(t, string(b), "s3cret-pw")
		assert.NotContains(t, string(b), "sealed")

		c, err := svc.Credentials(ctx, mac)
		require.NoError(t, err)
		assert.Equal(t, "s3cret-pw", c.Password)
		assert.NotContains(t, c.String(), "s3cret-pw")

		// A second Create conflicts and changes nothing.
		before := dump(t, st)
		_, err = svc.Create(ctx, mac, machine.Patch{Region: ptr("dc2")})
		require.ErrorIs(t, err, machine.ErrConflict)
		assert.Equal(t, before, dump(t, st))

		// Changing the username keeps the password; a new address drops it.
		m, err = svc.Update(ctx, mac, machine.Patch{BMC: &machine.BMCInput{Driver: machine.DriverIPMI, Address: "10.0.0.9:623", Username: "root"}}, false)
		require.NoError(t, err)
		assert.True(t, m.BMC.HasPassword)
		assert.Equal(t, "root", m.BMC.Username)
		assert.Equal(t, map[string]string{"rack": "r12"}, m.Tags, "tags untouched by a patch without tags")
		m, err = svc.Update(ctx, mac, machine.Patch{BMC: &machine.BMCInput{Driver: machine.DriverIPMI, Address: "10.0.0.10"}}, false)
		require.NoError(t, err)
		assert.False(t, m.BMC.HasPassword)

		// The sealed password does not open with another key, nor moved
		// to another machine.
		other, err := machine.NewSealer([]byte(strings.Repeat("x", machine.KeySize)))
		require.NoError(t, err)
		sealed, err := testSealer(t).Seal(mac, "pw")
		require.NoError(t, err)
		_, err = other.Open(mac, sealed)
		require.ErrorIs(t, err, machine.ErrUnseal)
		_, err = testSealer(t).Open(mustMAC(t, "52:54:00:00:00:01"), sealed)
		require.ErrorIs(t, err, machine.ErrUnseal)

		// Expected hardware: set, kept by patches that leave it out,
		// removed.
		m, err = svc.Update(ctx, mac, machine.Patch{Expected: &hardware.Expected{Cores: 32, MemoryGB: 256, Serial: "7XK2M33"}}, false)
		require.NoError(t, err)
		assert.Equal(t, &hardware.Expected{Cores: 32, MemoryGB: 256, Serial: "7XK2M33"}, m.Expected)
		m, err = svc.Update(ctx, mac, machine.Patch{Tags: map[string]string{"rack": "r13"}}, false)
		require.NoError(t, err)
		assert.Equal(t, 32, m.Expected.Cores)
		m, err = svc.Update(ctx, mac, machine.Patch{RemoveExpected: true}, false)
		require.NoError(t, err)
		assert.Nil(t, m.Expected)

		require.NoError(t, svc.Delete(ctx, mac))
		assert.Empty(t, dump(t, st))
		require.ErrorIs(t, svc.Delete(ctx, mac), machine.ErrNotFound)
		_, err = svc.Get(ctx, mac)
		require.ErrorIs(t, err, machine.ErrNotFound)
	})
}

func TestBadInputWritesNothing(t *testing.T) {
	pem := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	cases := []struct {
		name  string
		patch machine.Patch
		field string
	}{
		{"region", machine.Patch{Region: ptr("DC 1")}, "region"},
		{"tag key", machine.Patch{Tags: map[string]string{"Bad Key": "x"}}, "tags"},
		{"tag value", machine.Patch{Tags: map[string]string{"k": "a\x00b"}}, "tags.k"},
		{"driver", machine.Patch{BMC: &machine.BMCInput{Driver: "telnet", Address: "h"}}, "bmc.driver"},
		{"no address", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi"}}, "bmc.address"},
		{"url address", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "https://h/x"}}, "bmc.address"},
		{"bad port", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h:99999"}}, "bmc.address"},
		{"ipmi password too long", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h", Password: strings.Repeat("p", 21)}}, "bmc.password"},
		{"ipmi username too long", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h", Username: strings.Repeat("u", 17)}}, "bmc.username"},
		{"control char password", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h", Password: "a\nb"}}, "bmc.password"},
		{"redfish unpinned", machine.Patch{BMC: &machine.BMCInput{Driver: "redfish", Address: "h"}}, "bmc.cert_sha256"},
		{"bad pin", machine.Patch{BMC: &machine.BMCInput{Driver: "redfish", Address: "h", CertSHA256: "abc"}}, "bmc.cert_sha256"},
		{"bad CA", machine.Patch{BMC: &machine.BMCInput{Driver: "redfish", Address: "h", CACert: pem}}, "bmc.ca_cert"},
		{"ipmi with pin", machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h", CertSHA256: strings.Repeat("ab", 32)}}, "bmc.cert_sha256"},
		{"expected nothing", machine.Patch{Expected: &hardware.Expected{}}, "expected"},
		{"expected negative cores", machine.Patch{Expected: &hardware.Expected{Cores: -4}}, "expected.cores"},
		{"expected serial with control char", machine.Patch{Expected: &hardware.Expected{Serial: "a\tb"}}, "expected.serial"},
	}
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	svc := machine.NewService(st, machine.Config{Sealer: testSealer(t)})
	mac := mustMAC(t, "52:54:00:12:34:56")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Update(context.Background(), mac, tc.patch, true)
			var ve *machine.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tc.field, ve.Field)
			assert.ErrorIs(t, err, machine.ErrInvalid)
			assert.NotContains(t, err.Error(), "ppppppppppppppppppppp", "the password is never quoted")
			assert.Empty(t, dump(t, st))
		})
	}
	t.Run("password without key", func(t *testing.T) {
		nokey := machine.NewService(st, machine.Config{})
		_, err := nokey.Update(context.Background(), mac, machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "h", Password: "pw"}}, true)
		var ve *machine.ValidationError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, "bmc.password", ve.Field)
		assert.Empty(t, dump(t, st))
	})
	t.Run("update of unknown machine without upsert", func(t *testing.T) {
		_, err := svc.Update(context.Background(), mac, machine.Patch{Region: ptr("dc1")}, false)
		require.ErrorIs(t, err, machine.ErrNotFound)
		assert.Empty(t, dump(t, st))
	})
}

func hw(cores, memGB int, vendor, product string, disks ...int) *hardware.Info {
	info := &hardware.Info{CPU: hardware.CPU{Cores: cores}, Memory: hardware.Memory{TotalGB: memGB},
		System: hardware.System{Vendor: vendor, Product: product}}
	for _, d := range disks {
		info.Disks = append(info.Disks, hardware.Disk{Device: "/dev/sda", SizeGB: d})
	}
	return info
}

func TestViewListsAndFilters(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		svc := machine.NewService(st, machine.Config{Sealer: testSealer(t)})
		macs := []string{"52:54:00:00:00:01", "52:54:00:00:00:02", "aa:bb:cc:00:00:03", "52:54:00:00:00:04"}
		// Two discovered before the view starts, two after.
		require.NoError(t, svc.Observe(ctx, mustMAC(t, macs[0]), machine.Report{Region: "dc1", Hardware: hw(8, 32, "Dell Inc.", "PowerEdge R650", 480, 1920), Source: "10.0.0.5:40000"}))
		_, err := svc.Create(ctx, mustMAC(t, macs[1]), machine.Patch{Region: ptr("dc2"), Tags: map[string]string{"role": "db"}})
		require.NoError(t, err)

		v := machine.NewView(st, machine.ViewConfig{})
		done := make(chan struct{})
		go func() { defer close(done); _ = v.Run(ctx) }()
		defer func() { cancel(); <-done }()
		<-v.Synced()

		require.NoError(t, svc.Observe(ctx, mustMAC(t, macs[2]), machine.Report{Region: "dc1", Hardware: hw(64, 512, "Supermicro", "SYS-1029", 3840)}))
		_, err = svc.Update(ctx, mustMAC(t, macs[3]), machine.Patch{Region: ptr("dc1"), Tags: map[string]string{"role": "db", "rack": "r1"}}, true)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return v.List(machine.Filter{}).Total == 4 }, 10*time.Second, 10*time.Millisecond)

		cases := []struct {
			name string
			f    machine.Filter
			want []string
		}{
			{"all", machine.Filter{}, []string{macs[0], macs[1], macs[3], macs[2]}},
			{"region of report or spec", machine.Filter{Region: "dc1"}, []string{macs[0], macs[3], macs[2]}},
			{"tag", machine.Filter{Tags: map[string]string{"role": "db"}}, []string{macs[1], macs[3]}},
			{"two tags", machine.Filter{Tags: map[string]string{"role": "db", "rack": "r1"}}, []string{macs[3]}},
			{"cores", machine.Filter{MinCores: 16}, []string{macs[2]}},
			{"memory", machine.Filter{MinMemoryGB: 32}, []string{macs[0], macs[2]}},
			{"disk", machine.Filter{MinDiskGB: 1000}, []string{macs[0], macs[2]}},
			{"vendor", machine.Filter{Vendor: "dell"}, []string{macs[0]}},
			{"model", machine.Filter{Model: "sys-"}, []string{macs[2]}},
			{"mac prefix", machine.Filter{MACPrefix: "AA:BB"}, []string{macs[2]}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var got []string
				for _, m := range v.List(tc.f).Machines {
					got = append(got, m.MAC.String())
				}
				assert.Equal(t, tc.want, got)
			})
		}

		// Pages of two walk all four once.
		var seen []string
		f := machine.Filter{Limit: 2}
		for range 3 {
			p := v.List(f)
			for _, m := range p.Machines {
				seen = append(seen, m.MAC.String())
			}
			if p.Next == "" {
				break
			}
			f.After = mustMAC(t, p.Next)
		}
		assert.Equal(t, []string{macs[0], macs[1], macs[3], macs[2]}, seen)

		m, err := v.Get(mustMAC(t, macs[0]))
		require.NoError(t, err)
		assert.False(t, m.Registered, "known only from its report")
		assert.Equal(t, "10.0.0.5:40000", m.LastReport.Source)
		assert.False(t, m.LastSeen.IsZero())

		require.NoError(t, svc.Delete(ctx, mustMAC(t, macs[0])))
		require.Eventually(t, func() bool { _, err := v.Get(mustMAC(t, macs[0])); return err != nil }, 10*time.Second, 10*time.Millisecond)
	})
}

// TestPowerRequestLapses: a request no region carries out disappears from
// the record and the region's queue when its TTL passes.
func TestPowerRequestLapses(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		svc := machine.NewService(st, machine.Config{Sealer: testSealer(t), PowerRequestTTL: time.Second})
		mac := mustMAC(t, "52:54:00:12:34:57")
		_, err := svc.Create(ctx, mac, machine.Patch{Region: ptr("dc-gone"),
			BMC: &machine.BMCInput{Driver: "ipmi", Address: "127.0.0.1:9623", Username: "u", Password: "p"}})
		require.NoError(t, err)
		req, err := svc.RequestPower(ctx, mac, machine.PowerOn, "alice")
		require.NoError(t, err)
		assert.Equal(t, req.RequestedAt.Add(time.Second), req.ExpiresAt)
		m, err := svc.Get(ctx, mac)
		require.NoError(t, err)
		require.NotNil(t, m.PendingPower)
		assert.Equal(t, req.ExpiresAt, m.PendingPower.ExpiresAt)
		require.Eventually(t, func() bool {
			m, err := svc.Get(ctx, mac)
			_, qerr := st.Get(ctx, machine.RegionPowerKey("dc-gone", mac))
			return err == nil && m.PendingPower == nil && errors.Is(qerr, store.ErrNotFound)
		}, 15*time.Second, 50*time.Millisecond, "the request never lapsed")
		m, err = svc.Get(ctx, mac)
		require.NoError(t, err)
		assert.NotNil(t, m.BMC, "the rest of the record stays")
	})
}

func TestPowerRequestExpired(t *testing.T) {
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		req  machine.PowerRequest
		now  time.Time
		want bool
	}{
		{"before", machine.PowerRequest{ExpiresAt: at}, at.Add(-time.Second), false},
		{"at", machine.PowerRequest{ExpiresAt: at}, at, true},
		{"after", machine.PowerRequest{ExpiresAt: at}, at.Add(time.Hour), true},
		{"no expiry (written before expiry existed)", machine.PowerRequest{}, at, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { assert.Equal(t, tt.want, tt.req.Expired(tt.now)) })
	}
}

func TestPowerRequests(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		svc := machine.NewService(st, machine.Config{Sealer: testSealer(t)})
		mac := mustMAC(t, "52:54:00:12:34:56")

		_, err := svc.RequestPower(ctx, mac, machine.PowerOn, "alice")
		require.ErrorIs(t, err, machine.ErrNotFound)
		_, err = svc.Create(ctx, mac, machine.Patch{Region: ptr("dc1")})
		require.NoError(t, err)
		_, err = svc.RequestPower(ctx, mac, machine.PowerOn, "alice")
		require.ErrorIs(t, err, machine.ErrNoBMC)
		_, err = svc.Update(ctx, mac, machine.Patch{BMC: &machine.BMCInput{Driver: "ipmi", Address: "127.0.0.1:9623", Username: "u", Password: "p"}}, false)
		require.NoError(t, err)
		_, err = svc.RequestPower(ctx, mac, "reboot-now", "alice")
		var ve *machine.ValidationError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, "action", ve.Field)

		req, err := svc.RequestPower(ctx, mac, machine.PowerCycle, "alice")
		require.NoError(t, err)
		assert.Equal(t, req.RequestedAt.Add(machine.DefaultPowerRequestTTL), req.ExpiresAt)
		kv, err := st.Get(ctx, machine.Prefix+mac.String()+"/power_request")
		require.NoError(t, err)
		assert.NotEqual(t, store.NoLease, kv.Lease, "the request lapses with a lease")

		// A newer request replaces it; the outcome of the older one does
		// not remove the newer.
		assert.Equal(t, "dc1", req.Region)
		_, err = st.Get(ctx, machine.RegionPowerKey("dc1", mac))
		require.NoError(t, err, "queued for its region")
		req2, err := svc.RequestPower(ctx, mac, machine.PowerOff, "bob")
		require.NoError(t, err)
		require.NoError(t, svc.SetPower(ctx, mac, machine.Power{State: machine.StateOn, Action: machine.PowerCycle, OK: true, RequestID: req.ID}, req, kv.ModRevision))
		m, err := svc.Get(ctx, mac)
		require.NoError(t, err)
		require.NotNil(t, m.PendingPower)
		assert.Equal(t, machine.PowerOff, m.PendingPower.Action)
		assert.Equal(t, machine.StateOn, m.Power.State)

		kv, err = st.Get(ctx, machine.Prefix+mac.String()+"/power_request")
		require.NoError(t, err)
		require.NoError(t, svc.SetPower(ctx, mac, machine.Power{State: machine.StateOff, Action: machine.PowerOff, OK: true}, req2, kv.ModRevision))
		m, err = svc.Get(ctx, mac)
		require.NoError(t, err)
		assert.Nil(t, m.PendingPower)
		_, err = st.Get(ctx, machine.RegionPowerKey("dc1", mac))
		require.ErrorIs(t, err, store.ErrNotFound, "gone from the region's queue")
		assert.Equal(t, machine.StateOff, m.Power.State)
	})
}

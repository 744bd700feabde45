package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Fence guards the region's writes (Config.Fence), as task.Fence does for
// tasks: a region process deposed as leader cannot write.
type Fence interface {
	Compares() []store.Compare
	Check(ctx context.Context) error
}

// Config configures a Service. The zero value works without a sealing key:
// records without BMC passwords only.
type Config struct {
	// Sealer seals and opens BMC passwords; nil refuses passwords
	// (ErrNoKey).
	Sealer *Sealer
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Fence, if set, guards every write (a region's leadership).
	Fence Fence
	// PowerRequestTTL is how long an operator's power request waits for
	// its region before it lapses (default DefaultPowerRequestTTL).
	PowerRequestTTL time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// DefaultPowerRequestTTL is Config.PowerRequestTTL's default: a region
// that runs carries a request out within seconds.
const DefaultPowerRequestTTL = 10 * time.Minute

// Service reads and writes machine records over a store. It holds no state:
// any number of Services may share one store.
type Service struct {
	st  store.Store
	cfg Config
}

// NewService returns a Service over st.
func NewService(st store.Store, cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PowerRequestTTL <= 0 {
		cfg.PowerRequestTTL = DefaultPowerRequestTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{st: st, cfg: cfg}
}

// maxCASRetries bounds the re-reads of an update that keeps losing races.
const maxCASRetries = 8

func (s *Service) txn(ctx context.Context, t store.Txn) (store.TxnResult, error) {
	if s.cfg.Fence == nil {
		return s.st.Txn(ctx, t)
	}
	t.If = append(slices.Clip(t.If), s.cfg.Fence.Compares()...)
	res, err := s.st.Txn(ctx, t)
	if err == nil && !res.Succeeded {
		if ferr := s.cfg.Fence.Check(ctx); ferr != nil {
			return res, fmt.Errorf("%w: %w", ErrFenced, ferr)
		}
	}
	return res, err
}

// raw is one record's keys as read.
type raw struct {
	kvs map[string]store.KV
	rev int64
}

func (s *Service) read(ctx context.Context, mac lpmos.MAC) (raw, error) {
	res, err := s.st.List(ctx, machinePrefix(mac), store.ListOptions{})
	if err != nil {
		return raw{}, err
	}
	r := raw{kvs: make(map[string]store.KV, len(res.KVs)), rev: res.Revision}
	for _, kv := range res.KVs {
		if _, field, ok := splitKey(kv.Key); ok {
			r.kvs[field] = kv
		}
	}
	return r, nil
}

// Get returns a machine's record.
func (s *Service) Get(ctx context.Context, mac lpmos.MAC) (*Machine, error) {
	r, err := s.read(ctx, mac)
	if err != nil {
		return nil, err
	}
	if len(r.kvs) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, mac)
	}
	var e entry
	for field, kv := range r.kvs {
		e.set(field, kv.Value)
	}
	return e.machine(mac), nil
}

// Create registers a machine that has no operator record yet (it may
// have been discovered already). ErrConflict if it is registered.
func (s *Service) Create(ctx context.Context, mac lpmos.MAC, p Patch) (*Machine, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	now := s.cfg.Now().UTC()
	sp := &spec{CreatedAt: now, CreatedBy: p.Actor, UpdatedAt: now, UpdatedBy: p.Actor}
	if err := s.apply(mac, sp, p); err != nil {
		return nil, err
	}
	b, err := json.Marshal(sp)
	if err != nil {
		return nil, err
	}
	k := key(mac, keySpec)
	res, err := s.txn(ctx, store.Txn{If: []store.Compare{store.Missing(k)}, Then: []store.Op{store.OpPut(k, b)}})
	if err != nil {
		return nil, err
	}
	if !res.Succeeded {
		return nil, fmt.Errorf("%w: machine %s is already registered", ErrConflict, mac)
	}
	return s.Get(ctx, mac)
}

// Update changes a machine's operator record. With upsert, a machine
// without one is registered (an operator who enters a BMC before the
// machine ever booted); without, ErrNotFound.
func (s *Service) Update(ctx context.Context, mac lpmos.MAC, p Patch, upsert bool) (*Machine, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	k := key(mac, keySpec)
	for range maxCASRetries {
		r, err := s.read(ctx, mac)
		if err != nil {
			return nil, err
		}
		if len(r.kvs) == 0 && !upsert {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, mac)
		}
		now := s.cfg.Now().UTC()
		sp := &spec{CreatedAt: now, CreatedBy: p.Actor}
		cur, had := r.kvs[keySpec]
		if had {
			if err := json.Unmarshal(cur.Value, sp); err != nil {
				return nil, fmt.Errorf("machine %s: stored record unreadable: %w", mac, err)
			}
		}
		sp.UpdatedAt, sp.UpdatedBy = now, p.Actor
		if err := s.apply(mac, sp, p); err != nil {
			return nil, err
		}
		b, err := json.Marshal(sp)
		if err != nil {
			return nil, err
		}
		res, err := s.txn(ctx, store.Txn{
			If:   []store.Compare{store.ModRevisionIs(k, cur.ModRevision)},
			Then: []store.Op{store.OpPut(k, b)},
		})
		if err != nil {
			return nil, err
		}
		if res.Succeeded {
			return s.Get(ctx, mac)
		}
	}
	return nil, fmt.Errorf("%w: machine %s kept changing", ErrConflict, mac)
}

// apply folds a validated patch into sp, sealing a new password.
func (s *Service) apply(mac lpmos.MAC, sp *spec, p Patch) error {
	if p.Region != nil {
		sp.Region = *p.Region
	}
	if p.Tags != nil {
		sp.Tags = p.Tags
		if len(sp.Tags) == 0 {
			sp.Tags = nil
		}
	}
	if p.RemoveBMC {
		sp.BMC = nil
	}
	if p.RemoveExpected {
		sp.Expected = nil
	}
	if p.Expected != nil {
		e := *p.Expected
		sp.Expected = &e
	}
	if in := p.BMC; in != nil {
		nb := &storedBMC{BMC: BMC{Driver: in.Driver, Address: in.Address, Username: in.Username, CertSHA256: in.CertSHA256, CACert: in.CACert}}
		switch {
		case in.Password != "":
			sealed, err := s.cfg.Sealer.Seal(mac, in.Password)
			if errors.Is(err, ErrNoKey) {
				return invalid("bmc.password", "this control plane has no BMC key (--bmc-key-file), so it cannot store passwords")
			}
			if err != nil {
				return err
			}
			nb.PasswordSealed = sealed
		case sp.BMC != nil && sp.BMC.Driver == in.Driver && sp.BMC.Address == in.Address:
			nb.PasswordSealed = sp.BMC.PasswordSealed
		}
		nb.HasPassword = nb.PasswordSealed != ""
		sp.BMC = nb
	}
	return nil
}

// Delete removes a machine's record, every key of it.
func (s *Service) Delete(ctx context.Context, mac lpmos.MAC) error {
	p := machinePrefix(mac)
	res, err := s.st.List(ctx, p, store.ListOptions{Limit: 1})
	if err != nil {
		return err
	}
	if len(res.KVs) == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, mac)
	}
	_, err = s.txn(ctx, store.Txn{Then: []store.Op{store.OpDeletePrefix(p)}})
	return err
}

// Observe records a machine's hardware report: a region calls it when its
// agent reports, for a task or in discovery. The record is created if the
// machine is new.
func (s *Service) Observe(ctx context.Context, mac lpmos.MAC, rep Report) error {
	if rep.At.IsZero() {
		rep.At = s.cfg.Now().UTC()
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if len(b) > store.MaxValueSize {
		return fmt.Errorf("%w: hardware report of %d bytes", ErrInvalid, len(b))
	}
	_, err = s.txn(ctx, store.Txn{Then: []store.Op{store.OpPut(key(mac, keyReport), b)}})
	return err
}

// Reported reports whether the machine has a hardware report on record.
func (s *Service) Reported(ctx context.Context, mac lpmos.MAC) (bool, error) {
	_, err := s.st.Get(ctx, key(mac, keyReport))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Credentials is what a region needs to drive a machine's BMC. Its
// String and LogValue never show the password.
type Credentials struct {
	BMC
	Password string
}

// String hides the password.
func (c Credentials) String() string {
	return fmt.Sprintf("%s://%s@%s", c.Driver, c.Username, c.Address)
}

// LogValue hides the password.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("driver", c.Driver), slog.String("address", c.Address), slog.String("username", c.Username))
}

// Credentials opens a machine's BMC credentials. ErrNoBMC if it has none.
func (s *Service) Credentials(ctx context.Context, mac lpmos.MAC) (Credentials, error) {
	kv, err := s.st.Get(ctx, key(mac, keySpec))
	if errors.Is(err, store.ErrNotFound) {
		return Credentials{}, fmt.Errorf("%w: %s is not registered", ErrNoBMC, mac)
	}
	if err != nil {
		return Credentials{}, err
	}
	var sp spec
	if err := json.Unmarshal(kv.Value, &sp); err != nil {
		return Credentials{}, fmt.Errorf("machine %s: stored record unreadable: %w", mac, err)
	}
	if sp.BMC == nil {
		return Credentials{}, fmt.Errorf("%w: %s", ErrNoBMC, mac)
	}
	c := Credentials{BMC: sp.BMC.BMC}
	if sp.BMC.PasswordSealed != "" {
		if c.Password, err = s.cfg.Sealer.Open(mac, sp.BMC.PasswordSealed); err != nil {
			return Credentials{}, fmt.Errorf("machine %s: %w", mac, err)
		}
	}
	return c, nil
}

// RequestPower asks the machine's region to carry out a power action; a
// request not yet carried out is replaced. ErrNoBMC if the machine has
// none.
func (s *Service) RequestPower(ctx context.Context, mac lpmos.MAC, action, actor string) (*PowerRequest, error) {
	if !ValidPowerAction(action) {
		return nil, invalid("action", "%q is not one of %q, %q, %q, %q", trunc(action), PowerOn, PowerOff, PowerCycle, PowerStatus)
	}
	r, err := s.read(ctx, mac)
	if err != nil {
		return nil, err
	}
	sk, ok := r.kvs[keySpec]
	if !ok {
		if len(r.kvs) == 0 {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, mac)
		}
		return nil, fmt.Errorf("%w: %s", ErrNoBMC, mac)
	}
	var sp spec
	if err := json.Unmarshal(sk.Value, &sp); err != nil {
		return nil, fmt.Errorf("machine %s: stored record unreadable: %w", mac, err)
	}
	if sp.BMC == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoBMC, mac)
	}
	if sp.Region == "" && r.kvs[keyReport].Value == nil {
		return nil, invalid("region", "machine %s has no region: set one, so that a region's process drives its BMC", mac)
	}
	region := sp.Region
	if region == "" {
		var rep Report
		if err := json.Unmarshal(r.kvs[keyReport].Value, &rep); err != nil || rep.Region == "" {
			return nil, invalid("region", "machine %s has no region: set one, so that a region's process drives its BMC", mac)
		}
		region = rep.Region
	}
	now := s.cfg.Now().UTC()
	req := &PowerRequest{ID: uuid.NewString(), Action: action, Region: region, RequestedBy: actor, RequestedAt: now,
		ExpiresAt: now.Add(s.cfg.PowerRequestTTL)}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	// Both keys lapse with the request (a lease not used because the
	// transaction below fails expires unused).
	lease, err := s.st.Grant(ctx, s.cfg.PowerRequestTTL)
	if err != nil {
		return nil, err
	}
	// The request is written twice in one transaction: in the record
	// (shown with the machine) and in its region's queue, which only that
	// region watches. The BMC must still be the one checked: a request is
	// not carried out against a BMC the operator replaced meanwhile.
	ops := []store.Op{store.OpPut(key(mac, keyPowerRequest), b, store.WithLease(lease)), store.OpPut(RegionPowerKey(region, mac), b, store.WithLease(lease))}
	rk, had := r.kvs[keyPowerRequest]
	cmp := []store.Compare{store.ModRevisionIs(sk.Key, sk.ModRevision), store.ModRevisionIs(key(mac, keyPowerRequest), rk.ModRevision)}
	if had {
		var old PowerRequest
		if json.Unmarshal(rk.Value, &old) == nil && old.Region != "" && old.Region != region {
			ops = append(ops, store.OpDelete(RegionPowerKey(old.Region, mac)))
		}
	}
	res, err := s.txn(ctx, store.Txn{If: cmp, Then: ops})
	if err != nil {
		return nil, err
	}
	if !res.Succeeded {
		return nil, fmt.Errorf("%w: machine %s changed; retry", ErrConflict, mac)
	}
	return req, nil
}

// SetPower records the outcome of a power action (and the state the BMC
// reported). If it carried out an operator's request, req is that request
// and reqRev the mod revision of its keys: the request is removed from
// the record and its region's queue unless a newer one replaced it
// meanwhile.
func (s *Service) SetPower(ctx context.Context, mac lpmos.MAC, p Power, req *PowerRequest, reqRev int64) error {
	if p.At.IsZero() {
		p.At = s.cfg.Now().UTC()
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	put := store.OpPut(key(mac, keyPower), b)
	if req != nil && reqRev > 0 {
		// No Else branch: with a fence, a failed compare must write
		// nothing, so the outcome alone is put in a second transaction.
		rk := key(mac, keyPowerRequest)
		res, err := s.txn(ctx, store.Txn{
			If:   []store.Compare{store.ModRevisionIs(rk, reqRev)},
			Then: []store.Op{put, store.OpDelete(rk), store.OpDelete(RegionPowerKey(req.Region, mac))},
		})
		if err != nil || res.Succeeded {
			return err
		}
	}
	_, err = s.txn(ctx, store.Txn{Then: []store.Op{put}})
	return err
}

// FollowPowerRequests lists and watches a region's queue of power
// requests until ctx ends, calling fn with each request put there (after
// a listing: with every one queued) and its key's mod revision. Only the
// region's own queue is read: a region never receives another's events.
func FollowPowerRequests(ctx context.Context, st store.Store, region string, log *slog.Logger, fn func(ctx context.Context, mac lpmos.MAC, req *PowerRequest, rev int64)) {
	prefix := RegionPowerPrefix(region)
	store.Follow(ctx, log, "power request watch", func(ctx context.Context) error {
		res, err := st.List(ctx, prefix, store.ListOptions{})
		if err != nil {
			return err
		}
		deliver := func(kv store.KV) {
			mac, err := lpmos.ParseMAC(strings.TrimPrefix(kv.Key, prefix))
			var req PowerRequest
			if err != nil || json.Unmarshal(kv.Value, &req) != nil {
				return
			}
			fn(ctx, mac, &req, kv.ModRevision)
		}
		for _, kv := range res.KVs {
			deliver(kv)
		}
		wctx, cancel := context.WithCancel(ctx)
		watch := st.Watch(wctx, prefix, res.Revision+1)
		defer func() {
			cancel()
			for range watch {
			}
		}()
		for resp := range watch {
			if resp.Err != nil {
				return resp.Err
			}
			for _, ev := range resp.Events {
				if ev.Type == store.EventPut {
					deliver(ev.KV)
				}
			}
		}
		if ctx.Err() == nil {
			return errors.New("power request watch closed")
		}
		return ctx.Err()
	})
}

// PendingPowerRequests lists a region's queue.
func PendingPowerRequests(ctx context.Context, st store.Store, region string) (map[lpmos.MAC]store.KV, error) {
	prefix := RegionPowerPrefix(region)
	res, err := st.List(ctx, prefix, store.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make(map[lpmos.MAC]store.KV, len(res.KVs))
	for _, kv := range res.KVs {
		if mac, err := lpmos.ParseMAC(strings.TrimPrefix(kv.Key, prefix)); err == nil {
			out[mac] = kv
		}
	}
	return out, nil
}

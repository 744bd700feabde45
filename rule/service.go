package rule

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
)

// Service reads and writes rules over a store.
type Service struct {
	st  store.Store
	now func() time.Time
}

// NewService returns a Service over st; now defaults to time.Now.
func NewService(st store.Store, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{st: st, now: now}
}

// Put creates or replaces a rule. A create counts the rules and writes
// the rule in one transaction with GuardKey, so that creates racing for
// the last free place cannot both take it: at most MaxRules rules exist.
func (s *Service) Put(ctx context.Context, r Rule, actor string) (*Rule, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	r.UpdatedAt, r.UpdatedBy = s.now().UTC(), actor
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	k := Prefix + r.Name
	for range maxCASRetries {
		// The guard before the count: a create that commits after this
		// read changes the guard, so a count read before that create
		// cannot pass the compare below.
		var guardRev int64
		if g, err := s.st.Get(ctx, GuardKey); err == nil {
			guardRev = g.ModRevision
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		res, err := s.st.List(ctx, Prefix, store.ListOptions{Limit: MaxRules + 1})
		if err != nil {
			return nil, err
		}
		if i := slices.IndexFunc(res.KVs, func(kv store.KV) bool { return kv.Key == k }); i >= 0 {
			// A replacement takes no place, if the rule is still there.
			tr, err := s.st.Txn(ctx, store.Txn{
				If:   []store.Compare{store.ModRevisionIs(k, res.KVs[i].ModRevision)},
				Then: []store.Op{store.OpPut(k, b)},
			})
			if err != nil {
				return nil, err
			}
			if tr.Succeeded {
				return &r, nil
			}
			continue
		}
		if len(res.KVs) >= MaxRules {
			return nil, fmt.Errorf("%w: %d rules already, at most %d", ErrConflict, len(res.KVs), MaxRules)
		}
		tr, err := s.st.Txn(ctx, store.Txn{
			If:   []store.Compare{store.Missing(k), store.ModRevisionIs(GuardKey, guardRev)},
			Then: []store.Op{store.OpPut(k, b), store.OpPut(GuardKey, []byte(strconv.Itoa(len(res.KVs)+1)))},
		})
		if err != nil {
			return nil, err
		}
		if tr.Succeeded {
			return &r, nil
		}
	}
	return nil, fmt.Errorf("%w: rules kept changing; try again", ErrConflict)
}

// maxCASRetries bounds Put's compare-and-swap attempts.
const maxCASRetries = 8

// Get returns a rule.
func (s *Service) Get(ctx context.Context, name string) (*Rule, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	kv, err := s.st.Get(ctx, Prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	var r Rule
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return nil, fmt.Errorf("rule %s unreadable: %w", name, err)
	}
	return &r, nil
}

// List returns every rule, sorted by name.
func (s *Service) List(ctx context.Context) ([]Rule, error) {
	res, err := s.st.List(ctx, Prefix, store.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make([]Rule, 0, len(res.KVs))
	for _, kv := range res.KVs {
		var r Rule
		if json.Unmarshal(kv.Value, &r) == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// Delete removes a rule.
func (s *Service) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	n, _, err := s.st.Delete(ctx, Prefix+name)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return nil
}

// View is an in-memory copy of the rules, kept by one watch.
type View struct {
	st  store.Store
	log *slog.Logger

	mu    sync.RWMutex
	rules map[string]Rule

	synced     chan struct{}
	syncedOnce sync.Once
}

// Synced is closed once the first listing is in.
func (v *View) Synced() <-chan struct{} { return v.synced }

// NewView returns a View over st; Run fills it.
func NewView(st store.Store, log *slog.Logger) *View {
	if log == nil {
		log = slog.Default()
	}
	return &View{st: st, log: log, rules: map[string]Rule{}, synced: make(chan struct{})}
}

// Run lists and watches until ctx ends.
func (v *View) Run(ctx context.Context) error {
	store.Follow(ctx, v.log, "rule view", v.follow)
	return nil
}

func (v *View) follow(ctx context.Context) error {
	res, err := v.st.List(ctx, Prefix, store.ListOptions{})
	if err != nil {
		return err
	}
	fresh := map[string]Rule{}
	for _, kv := range res.KVs {
		var r Rule
		if json.Unmarshal(kv.Value, &r) == nil {
			fresh[r.Name] = r
		}
	}
	v.mu.Lock()
	v.rules = fresh
	v.mu.Unlock()
	v.syncedOnce.Do(func() { close(v.synced) })
	wctx, cancel := context.WithCancel(ctx)
	watch := v.st.Watch(wctx, Prefix, res.Revision+1)
	defer func() {
		cancel()
		for range watch {
		}
	}()
	for resp := range watch {
		if resp.Err != nil {
			return resp.Err
		}
		v.mu.Lock()
		for _, ev := range resp.Events {
			name := strings.TrimPrefix(ev.KV.Key, Prefix)
			var r Rule
			if ev.Type == store.EventDelete || json.Unmarshal(ev.KV.Value, &r) != nil {
				delete(v.rules, name)
				continue
			}
			v.rules[name] = r
		}
		v.mu.Unlock()
	}
	if ctx.Err() == nil {
		return errors.New("rule watch closed")
	}
	return ctx.Err()
}

// Rules returns the rules, sorted by name.
func (v *View) Rules() []Rule {
	v.mu.RLock()
	out := make([]Rule, 0, len(v.rules))
	for _, r := range v.rules {
		out = append(out, r)
	}
	v.mu.RUnlock()
	slices.SortFunc(out, func(a, b Rule) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Decision is the outcome of Evaluate.
type Decision struct {
	// Approver is "rule:<name>" of the first matching rule (by name);
	// empty if none matched.
	Approver string
	// Applied counts the rules that applied to the task.
	Applied int
	// Reasons says, per rule that applied and failed, why.
	Reasons []string
}

// Evaluate applies rules to a task of region with tags and its report.
func Evaluate(rules []Rule, region string, tags map[string]string, hw *hardware.Info, expected *hardware.Expected) Decision {
	var d Decision
	for i := range rules {
		r := &rules[i]
		if !r.AppliesTo(region, tags) {
			continue
		}
		d.Applied++
		ok, why := r.Match(hw, expected)
		if ok {
			d.Approver = ActorPrefix + r.Name
			return d
		}
		d.Reasons = append(d.Reasons, r.Name+": "+strings.Join(why, "; "))
	}
	return d
}

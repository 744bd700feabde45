package region

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store/memory"
)

// fakeClock is a leadership's clock that a test moves.
type fakeClock struct {
	mu sync.Mutex
	at time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.at }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.at = c.at.Add(d)
	c.mu.Unlock()
}

// A leader is cut off when its term lapsed (its deadline passed) and its
// calls to the store fail since; it is not when the store last answered
// it (a process stopped and continued), and it stops being cut off the
// moment the store answers: it leads again, or it learns another leads.
func TestLeadershipCutOff(t *testing.T) {
	st := memory.New(memory.WithExpiryInterval(20 * time.Millisecond))
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	dead, cancel := context.WithCancel(ctx)
	cancel() // every store call with it fails, as with a store out of reach
	const ttl = 300 * time.Millisecond

	t.Run("stopped and continued", func(t *testing.T) {
		clock := &fakeClock{at: time.Now()}
		a := newLeadership(st, "dc1", "a", ttl, func(bool) {})
		a.now = clock.now
		a.campaign(ctx)
		require.True(t, a.leading())
		clock.add(2 * ttl) // its deadline passed while it was stopped
		a.lapse()
		assert.False(t, a.leading())
		assert.False(t, a.cutOff(), "its last store call was answered")
		a.resign()
	})

	t.Run("cut off, then back and leading", func(t *testing.T) {
		clock := &fakeClock{at: time.Now()}
		a := newLeadership(st, "dc1", "a", ttl, func(bool) {})
		a.now = clock.now
		a.campaign(ctx)
		require.True(t, a.leading())
		a.renew(dead)
		assert.True(t, a.leading(), "a failed renewal leaves the term to its deadline")
		assert.False(t, a.cutOff())
		clock.add(2 * ttl)
		a.lapse()
		a.campaign(dead)
		assert.False(t, a.leading())
		assert.True(t, a.cutOff())
		a.campaign(ctx) // the store is back: its own old key is replaced
		assert.True(t, a.leading())
		assert.False(t, a.cutOff())
		a.resign()
	})

	t.Run("cut off, then back as standby", func(t *testing.T) {
		clock := &fakeClock{at: time.Now()}
		a := newLeadership(st, "dc1", "a", ttl, func(bool) {})
		b := newLeadership(st, "dc1", "b", ttl, func(bool) {})
		a.now = clock.now
		a.campaign(ctx)
		require.True(t, a.leading())
		a.renew(dead)
		clock.add(2 * ttl)
		a.lapse()
		require.True(t, a.cutOff())
		// b takes over once a's lease expired in the store.
		require.Eventually(t, func() bool { b.campaign(ctx); return b.leading() }, 10*time.Second, 20*time.Millisecond)
		a.campaign(ctx)
		assert.False(t, a.leading())
		assert.False(t, a.cutOff(), "another process leads: a deposed leader does not act")
		b.resign()
	})
}

package power

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RetryPolicy says how often and how patiently Do tries. The zero value
// means 3 attempts, waiting 0.5 s and then 1 s.
type RetryPolicy struct {
	// Attempts is the number of calls in all, at least 1; 0 means 3.
	Attempts int
	// Initial is the wait after the first failure; 0 means 500 ms. Each
	// further wait doubles, up to Max (0 means 10 s).
	Initial, Max time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 3
	}
	if p.Initial <= 0 {
		p.Initial = 500 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	return p
}

// Do calls fn until it succeeds, at most p.Attempts times, waiting between
// attempts with exponential backoff. It does not retry an error that
// another attempt would not change: ErrAuth, ErrInvalid, ErrUnsupported.
// It returns fn's last error, or, if ctx ends first, ctx's error joined
// with fn's last error.
func Do(ctx context.Context, p RetryPolicy, fn func(context.Context) error) error {
	p = p.withDefaults()
	wait := p.Initial
	var err error
	for attempt := 1; ; attempt++ {
		if err = fn(ctx); err == nil {
			return nil
		}
		if !Retryable(err) || attempt >= p.Attempts {
			return err
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(fmt.Errorf("power: gave up after %d attempts: %w", attempt, ctx.Err()), err)
		case <-t.C:
		}
		wait = min(2*wait, p.Max)
	}
}

// Retryable reports whether Do would try again after err.
func Retryable(err error) bool {
	return err != nil && !errors.Is(err, ErrAuth) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported)
}

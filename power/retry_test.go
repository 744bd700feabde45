package power_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/power"
)

func TestDo(t *testing.T) {
	transient := fmt.Errorf("bmc busy: %w", power.ErrUnreachable)
	tiny := power.RetryPolicy{Attempts: 4, Initial: time.Microsecond, Max: 4 * time.Microsecond}
	tests := []struct {
		name     string
		policy   power.RetryPolicy
		errs     []error // fn returns these in turn, then nil
		wantErr  error   // nil: success
		attempts int
	}{
		{"first try", tiny, nil, nil, 1},
		{"succeeds on third", tiny, []error{transient, transient}, nil, 3},
		{"gives up after attempts", tiny, []error{transient, transient, transient, transient, transient}, power.ErrUnreachable, 4},
		{"auth not retried", tiny, []error{fmt.Errorf("x: %w", power.ErrAuth)}, power.ErrAuth, 1},
		{"invalid not retried", tiny, []error{&power.ValidationError{Field: "action", Reason: "bad"}}, power.ErrInvalid, 1},
		{"unsupported not retried", tiny, []error{fmt.Errorf("x: %w", power.ErrUnsupported)}, power.ErrUnsupported, 1},
		{"auth after transient", tiny, []error{transient, fmt.Errorf("x: %w", power.ErrAuth)}, power.ErrAuth, 2},
		{"one attempt", power.RetryPolicy{Attempts: 1, Initial: time.Microsecond}, []error{transient}, power.ErrUnreachable, 1},
		{"zero policy defaults to 3", power.RetryPolicy{Initial: time.Microsecond}, []error{transient, transient, transient, transient}, power.ErrUnreachable, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := power.Do(context.Background(), tt.policy, func(context.Context) error {
				calls++
				if calls <= len(tt.errs) {
					return tt.errs[calls-1]
				}
				return nil
			})
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
			assert.Equal(t, tt.attempts, calls)
		})
	}
}

func TestDoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := power.Do(ctx, power.RetryPolicy{Attempts: 100, Initial: time.Hour}, func(context.Context) error {
		calls++
		cancel() // the wait that follows must end with ctx, not after an hour
		return power.ErrUnreachable
	})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, power.ErrUnreachable)
	assert.Equal(t, 1, calls)
}

func TestRetryable(t *testing.T) {
	assert.False(t, power.Retryable(nil))
	assert.True(t, power.Retryable(errors.New("boom")))
	assert.True(t, power.Retryable(power.ErrUnreachable))
	assert.False(t, power.Retryable(fmt.Errorf("a: %w", power.ErrAuth)))
}

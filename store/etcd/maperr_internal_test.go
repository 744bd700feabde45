package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lpmos/lpmos/store"
)

func TestMapErr(t *testing.T) {
	tests := []struct {
		err  error
		want error // nil: no store sentinel
	}{
		{rpctypes.ErrCompacted, store.ErrCompacted},
		{rpctypes.ErrFutureRev, store.ErrFutureRevision},
		{rpctypes.ErrLeaseNotFound, store.ErrLeaseNotFound},
		{rpctypes.ErrRequestTooLarge, store.ErrTooLarge},
		{rpctypes.ErrTooManyOps, store.ErrTooLarge},
		{rpctypes.ErrDuplicateKey, store.ErrInvalid},
		{rpctypes.ErrNoLeader, store.ErrUnavailable},
		{rpctypes.ErrLeaderChanged, store.ErrUnavailable},
		{rpctypes.ErrTimeout, store.ErrUnavailable},
		{rpctypes.ErrTimeoutDueToLeaderFail, store.ErrUnavailable},
		{rpctypes.ErrTimeoutDueToConnectionLost, store.ErrUnavailable},
		{status.Error(codes.Unavailable, "connection refused"), store.ErrUnavailable},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), store.ErrUnavailable},
		{context.Canceled, nil},
		{errors.New("something else"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			got := mapErr("op", tt.err)
			assert.ErrorIs(t, got, tt.err, "the cause stays in the chain")
			for _, s := range []error{store.ErrCompacted, store.ErrFutureRevision, store.ErrLeaseNotFound, store.ErrTooLarge, store.ErrInvalid, store.ErrUnavailable} {
				assert.Equal(t, s == tt.want, errors.Is(got, s), "%v is %v", got, s)
			}
		})
	}
}

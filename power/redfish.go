package power

import "context"

func openRedfish(ctx context.Context, b BMC, o options) (Driver, error) {
	return nil, ErrUnsupported
}

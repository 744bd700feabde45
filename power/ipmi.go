package power

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// ipmiDriver drives a BMC over IPMI 2.0 RMCP+ (lanplus).
type ipmiDriver struct {
	mu     sync.Mutex // go-ipmi's session state (sequence numbers) is not safe for concurrent calls
	c      *client.Client
	closed bool
	log    *slog.Logger
}

// errClosed is returned by a driver's calls after its Close.
var errClosed = fmt.Errorf("power: driver closed: %w", ErrInvalid)

func openIPMI(ctx context.Context, b BMC, o options) (*ipmiDriver, error) {
	host, port, err := b.hostPort()
	if err != nil {
		return nil, &ValidationError{Field: "Address", Reason: err.Error()}
	}
	c, err := client.NewClient(host, port, b.Username, b.Password)
	if err != nil {
		return nil, &ValidationError{Field: "Username", Reason: err.Error()}
	}
	// Cipher suites 17 (HMAC-SHA256, AES-CBC-128) and 3 (HMAC-SHA1,
	// AES-CBC-128), tried in this order, are the two BMCs support in
	// practice. Naming them skips go-ipmi's cipher suite discovery, which
	// a BMC without "Get Channel Cipher Suites" (ipmi_sim is one) answers
	// only with its timeouts: 5 s per connection.
	c.WithInterface(client.InterfaceLanplus).WithCipherSuiteID(types.CipherSuiteID17, types.CipherSuiteID3)
	if err := c.Connect(ctx); err != nil {
		// Close the socket; there is no session to close, so bound the
		// futile Close Session request tightly.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 50*time.Millisecond)
		_ = c.Close(cctx)
		cancel()
		return nil, ipmiError(ctx, "connect", err)
	}
	o.log.Debug("ipmi session open")
	return &ipmiDriver{c: c, log: o.log}, nil
}

func (d *ipmiDriver) PowerState(ctx context.Context) (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.powerState(ctx)
}

func (d *ipmiDriver) powerState(ctx context.Context) (State, error) {
	if d.closed {
		return StateUnknown, errClosed
	}
	st, err := d.c.GetChassisStatus(ctx)
	if err != nil {
		return StateUnknown, ipmiError(ctx, "get chassis status", err)
	}
	if st.PowerIsOn {
		return StateOn, nil
	}
	return StateOff, nil
}

func (d *ipmiDriver) SetPower(ctx context.Context, a Action) error {
	if err := checkAction(a); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	var ctl chassis.ChassisControl
	switch a {
	case ActionOn:
		ctl = chassis.ChassisControlPowerUp
	case ActionOff:
		ctl = chassis.ChassisControlPowerDown
	case ActionCycle:
		// IPMI's power cycle "has no effect" on a machine that is off
		// (IPMI 2.0 §28.3; many BMCs answer 0xD5): switch it on instead.
		st, err := d.powerState(ctx)
		if err != nil {
			return err
		}
		ctl = chassis.ChassisControlPowerCycle
		if st == StateOff {
			ctl = chassis.ChassisControlPowerUp
		}
	}
	if _, err := d.c.ChassisControl(ctx, ctl); err != nil {
		return ipmiError(ctx, "chassis control "+string(a), err)
	}
	d.log.Debug("ipmi power", "action", string(a), "control", uint8(ctl))
	return nil
}

func (d *ipmiDriver) SetNextBoot(ctx context.Context, dev BootDevice) error {
	if err := checkBootDevice(dev); err != nil {
		return err
	}
	sel := types.BootDeviceSelectorForcePXE
	if dev == BootDisk {
		sel = types.BootDeviceSelectorForceHardDrive
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	// Keep the BIOS boot type (legacy or EFI) the BMC has: writing
	// "legacy" to a UEFI machine's boot flags would make it boot in
	// legacy mode, or not at all.
	bootType := types.BIOSBootTypeLegacy
	cur := &types.BootOptionParam_BootFlags{}
	if err := d.c.GetSystemBootOptionsParamFor(ctx, cur); err == nil {
		bootType = cur.BIOSBootType
	} else if ctx.Err() != nil {
		return ipmiError(ctx, "get boot flags", err)
	}
	if err := d.c.SetBootDevice(ctx, sel, bootType, false); err != nil {
		return ipmiError(ctx, "set boot flags", err)
	}
	d.log.Debug("ipmi next boot", "device", string(dev))
	return nil
}

// Close closes the session; it may be called more than once (go-ipmi's
// own Close panics the second time).
func (d *ipmiDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	// Close has no context: bound the Close Session exchange.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.c.Close(ctx); err != nil {
		return fmt.Errorf("power: ipmi close: %w", err)
	}
	return nil
}

// ipmiError maps go-ipmi's errors onto the package's sentinels.
func ipmiError(ctx context.Context, op string, err error) error {
	var (
		rmcp *types.RmcpStatusError
		resp *types.ResponseError
		nerr net.Error
	)
	authCodes := []types.RmcpStatusCode{types.RmcpStatusCodeUnauthorizedName, types.RmcpStatusCodeInvalidNameLength,
		types.RmcpStatusCodeUnauthorizedRoleOfPriLevel, types.RmcpStatusCodeUnauthorizedGUID}
	// go-ipmi's Connect20 formats the errors of the cipher suites it
	// tried with %v, so errors.Is/As cannot see them: match their text.
	msg := err.Error()
	for _, code := range authCodes {
		if strings.Contains(msg, types.NewRmcpStatusError(code).Error()) {
			return fmt.Errorf("power: ipmi %s: %w: %w", op, ErrAuth, err)
		}
	}
	switch {
	case errors.Is(err, client.ErrRAKPAuthentication), strings.Contains(msg, client.ErrRAKPAuthentication.Error()):
		// The RAKP 2 HMAC did not match: the password is wrong.
		return fmt.Errorf("power: ipmi %s: %w: wrong password (%w)", op, ErrAuth, err)
	case errors.As(err, &rmcp):
		if slices.Contains(authCodes, rmcp.StatusCode()) {
			return fmt.Errorf("power: ipmi %s: %w: %w", op, ErrAuth, err)
		}
	case errors.As(err, &resp):
		switch resp.CompletionCode() {
		case 0xc1, 0xcc, 0xd5, 0xd6: // invalid command, invalid data field, not supported now / disabled
			return fmt.Errorf("power: ipmi %s: %w: %w", op, ErrUnsupported, err)
		case 0xd4: // insufficient privilege
			return fmt.Errorf("power: ipmi %s: %w: %w", op, ErrAuth, err)
		}
	}
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return fmt.Errorf("power: ipmi %s: %w", op, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		// go-ipmi's read timeout error is unexported; its text is stable.
		strings.Contains(msg, "before deadline"), strings.Contains(msg, "before UDP read deadline"),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.As(err, &nerr):
		return fmt.Errorf("power: ipmi %s: %w: %w", op, ErrUnreachable, err)
	}
	return fmt.Errorf("power: ipmi %s: %w", op, err)
}

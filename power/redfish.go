package power

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// redfishMaxBody bounds every response body read from a BMC.
	redfishMaxBody = 1 << 20
	// redfishDefaultTimeout bounds a request whose context has no
	// deadline (and Close's logout).
	redfishDefaultTimeout = 30 * time.Second
)

// errPinMismatch: the BMC's certificate is not the pinned one.
var errPinMismatch = errors.New("certificate does not match the pinned SHA-256 fingerprint")

// redfishDriver drives a BMC over Redfish (DSP0266).
type redfishDriver struct {
	mu         sync.Mutex // one request sequence at a time; guards the fields below
	base       url.URL    // https://host:port
	tr         *http.Transport
	hc         *http.Client
	user, pass string
	sessions   string // the SessionService's Sessions collection, "" if none
	token      string // X-Auth-Token of our session, "" for basic authentication
	sessionURI string // our session, deleted on Close
	system     string // the ComputerSystem's path
	closed     bool
	log        *slog.Logger
}

func openRedfish(ctx context.Context, b BMC, o options) (*redfishDriver, error) {
	host, port, err := b.hostPort()
	if err != nil {
		return nil, &ValidationError{Field: "Address", Reason: err.Error()}
	}
	tlsConf, err := redfishTLS(b)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		// BMC networks are local; a proxy from the environment must
		// not see BMC credentials.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: redfishDefaultTimeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
	}
	d := &redfishDriver{
		base: url.URL{Scheme: "https", Host: net.JoinHostPort(host, strconv.Itoa(port))},
		tr:   tr,
		hc: &http.Client{
			Transport: tr,
			// A BMC's redirect could lead our credentials elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		user: b.Username,
		pass: b.Password,
		log:  o.log,
	}
	if err := d.open(ctx, b.SystemID); err != nil {
		_ = d.Close()
		return nil, err
	}
	return d, nil
}

// redfishTLS builds the TLS configuration: the given CA, or exactly the
// pinned certificate, or the system's roots. Verification cannot be
// switched off.
func redfishTLS(b BMC) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case len(b.CAPEM) > 0:
		pool, err := certPool(b.CAPEM)
		if err != nil {
			return nil, &ValidationError{Field: "CAPEM", Reason: err.Error()}
		}
		conf.RootCAs = pool
	case b.CertSHA256 != "":
		pin, err := parseFingerprint(b.CertSHA256)
		if err != nil {
			return nil, &ValidationError{Field: "CertSHA256", Reason: err.Error()}
		}
		// The chain and name checks are replaced by the pin, which is
		// stronger: only this one certificate is accepted.
		conf.InsecureSkipVerify = true
		conf.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errPinMismatch
			}
			sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return fmt.Errorf("%w (it has %x)", errPinMismatch, sum)
			}
			return nil
		}
	}
	return conf, nil
}

// open reads the service root, logs in and finds the system.
func (d *redfishDriver) open(ctx context.Context, systemID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var root struct {
		Systems        odataRef
		SessionService *odataRef
		Links          struct{ Sessions *odataRef }
	}
	systems := "/redfish/v1/Systems"
	d.sessions = "/redfish/v1/SessionService/Sessions"
	// The service root needs no authentication (DSP0266 §13.3.3).
	if _, err := d.request(ctx, http.MethodGet, "/redfish/v1", nil, nil, &root, false); err != nil {
		if errors.Is(err, ErrUnreachable) || errors.Is(err, ErrAuth) && isTLSError(err) {
			return err
		}
		d.log.Debug("redfish service root unreadable, using the standard paths", "err", err)
	} else {
		if root.Systems.ID != "" {
			systems = root.Systems.ID
		}
		switch {
		case root.Links.Sessions != nil && root.Links.Sessions.ID != "":
			d.sessions = root.Links.Sessions.ID
		case root.SessionService == nil:
			d.sessions = "" // no session service: basic authentication
		}
	}
	if err := d.login(ctx); err != nil {
		return err
	}
	var coll struct{ Members []odataRef }
	if _, err := d.do(ctx, http.MethodGet, systems, nil, nil, &coll); err != nil {
		return fmt.Errorf("power: redfish systems: %w", err)
	}
	for _, m := range coll.Members {
		if !localPath(m.ID) {
			d.log.Debug("redfish system member ignored: not a path on this BMC", "member", m.ID)
			continue
		}
		if systemID == "" || path.Base(m.ID) == systemID {
			d.system = m.ID
			break
		}
	}
	switch {
	case d.system != "":
	case systemID != "":
		return &ValidationError{Field: "SystemID", Reason: fmt.Sprintf("the BMC has no system %q", systemID)}
	default:
		return fmt.Errorf("power: redfish: the BMC lists no computer system: %w", ErrUnsupported)
	}
	d.log.Debug("redfish open", "system", d.system, "session", d.token != "")
	return nil
}

// login creates a session, or settles for basic authentication when the
// BMC has no session service. Called with d.mu held.
func (d *redfishDriver) login(ctx context.Context) error {
	d.token, d.sessionURI = "", ""
	if d.sessions == "" {
		return nil
	}
	body := map[string]string{"UserName": d.user, "Password": d.pass}
	var sess odataRef
	hdr, err := d.request(ctx, http.MethodPost, d.sessions, body, nil, &sess, false)
	switch {
	case err == nil:
	case errors.Is(err, ErrUnsupported), errors.Is(err, errBadRequest):
		d.log.Debug("redfish sessions unavailable, using basic authentication", "err", err)
		d.sessions = ""
		return nil
	default:
		return fmt.Errorf("power: redfish login: %w", err)
	}
	d.token = hdr.Get("X-Auth-Token")
	if d.token == "" {
		d.log.Debug("redfish session without a token, using basic authentication")
		d.sessions = ""
		return nil
	}
	d.sessionURI = sess.ID
	if loc := hdr.Get("Location"); loc != "" {
		if u, err := url.Parse(loc); err == nil {
			d.sessionURI = u.Path
		}
	}
	return nil
}

type odataRef struct {
	ID string `json:"@odata.id"`
}

// rfSystem is the part of a ComputerSystem the driver reads.
type rfSystem struct {
	PowerState string
	ETag       string `json:"@odata.etag"`
	Boot       struct {
		Targets []string `json:"BootSourceOverrideTarget@Redfish.AllowableValues"`
	}
	Actions struct {
		Reset struct {
			Target     string   `json:"target"`
			ResetTypes []string `json:"ResetType@Redfish.AllowableValues"`
		} `json:"#ComputerSystem.Reset"`
	}
}

func (d *redfishDriver) getSystem(ctx context.Context) (*rfSystem, error) {
	var sys rfSystem
	hdr, err := d.do(ctx, http.MethodGet, d.system, nil, nil, &sys)
	if err != nil {
		return nil, err
	}
	if etag := hdr.Get("ETag"); etag != "" {
		sys.ETag = etag
	}
	return &sys, nil
}

func redfishState(s string) State {
	switch s {
	case "On":
		return StateOn
	case "Off":
		return StateOff
	}
	return StateUnknown // PoweringOn, PoweringOff, Paused, missing
}

func (d *redfishDriver) PowerState(ctx context.Context) (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sys, err := d.getSystem(ctx)
	if err != nil {
		return StateUnknown, fmt.Errorf("power: redfish power state: %w", err)
	}
	return redfishState(sys.PowerState), nil
}

func (d *redfishDriver) SetPower(ctx context.Context, a Action) error {
	if err := checkAction(a); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sys, err := d.getSystem(ctx)
	if err != nil {
		return fmt.Errorf("power: redfish %s: %w", a, err)
	}
	state := redfishState(sys.PowerState)
	allowed := func(t string) bool {
		// No list means the BMC did not say: try.
		return len(sys.Actions.Reset.ResetTypes) == 0 || slices.Contains(sys.Actions.Reset.ResetTypes, t)
	}
	var resetType string
	switch {
	case a == ActionOn && state == StateOn, a == ActionOff && state == StateOff:
		return nil // already there; BMCs answer a redundant reset differently
	case a == ActionOn, a == ActionCycle && state == StateOff:
		resetType = "On"
	case a == ActionOff:
		resetType = "ForceOff"
	case allowed("PowerCycle"):
		resetType = "PowerCycle"
	default:
		resetType = "ForceRestart" // PowerCycle is newer; most BMCs have this
	}
	if !allowed(resetType) {
		return fmt.Errorf("power: redfish %s: ResetType %s not among %v: %w", a, resetType, sys.Actions.Reset.ResetTypes, ErrUnsupported)
	}
	target := sys.Actions.Reset.Target
	if target == "" {
		target = d.system + "/Actions/ComputerSystem.Reset"
	}
	if _, err := d.do(ctx, http.MethodPost, target, map[string]string{"ResetType": resetType}, nil, nil); err != nil {
		return fmt.Errorf("power: redfish %s (ResetType %s): %w", a, resetType, err)
	}
	d.log.Debug("redfish reset", "action", string(a), "reset_type", resetType)
	return nil
}

func (d *redfishDriver) SetNextBoot(ctx context.Context, dev BootDevice) error {
	if err := checkBootDevice(dev); err != nil {
		return err
	}
	target := "Pxe"
	if dev == BootDisk {
		target = "Hdd"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sys, err := d.getSystem(ctx)
	if err != nil {
		return fmt.Errorf("power: redfish next boot: %w", err)
	}
	if len(sys.Boot.Targets) > 0 && !slices.Contains(sys.Boot.Targets, target) {
		return fmt.Errorf("power: redfish next boot: target %s not among %v: %w", target, sys.Boot.Targets, ErrUnsupported)
	}
	var hdr http.Header
	if sys.ETag != "" {
		// Some BMCs refuse a PATCH without If-Match.
		hdr = http.Header{"If-Match": {sys.ETag}}
	}
	body := map[string]any{"Boot": map[string]string{
		"BootSourceOverrideTarget":  target,
		"BootSourceOverrideEnabled": "Once",
	}}
	if _, err := d.do(ctx, http.MethodPatch, d.system, body, hdr, nil); err != nil {
		return fmt.Errorf("power: redfish next boot %s: %w", target, err)
	}
	d.log.Debug("redfish next boot", "target", target)
	return nil
}

// Close deletes the session (bounded by redfishDefaultTimeout) and closes
// idle connections. It may be called more than once.
func (d *redfishDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var err error
	if d.sessionURI != "" {
		ctx, cancel := context.WithTimeout(context.Background(), redfishDefaultTimeout)
		_, err = d.request(ctx, http.MethodDelete, d.sessionURI, nil, nil, nil, true)
		cancel()
		if err != nil {
			err = fmt.Errorf("power: redfish logout: %w", err)
		}
	}
	d.token, d.sessionURI = "", ""
	d.tr.CloseIdleConnections()
	return err
}

// do is an authenticated request; on 401 with an expired session it logs
// in again and retries once. Called with d.mu held.
func (d *redfishDriver) do(ctx context.Context, method, p string, body any, hdr http.Header, out any) (http.Header, error) {
	if d.closed {
		return nil, errClosed
	}
	h, err := d.request(ctx, method, p, body, hdr, out, true)
	if errors.Is(err, errUnauthorized) && d.token != "" {
		d.log.Debug("redfish session rejected, logging in again")
		if lerr := d.login(ctx); lerr != nil {
			return nil, lerr
		}
		h, err = d.request(ctx, method, p, body, hdr, out, true)
	}
	return h, err
}

var (
	errUnauthorized = fmt.Errorf("401 Unauthorized: %w", ErrAuth)
	errBadRequest   = errors.New("400 Bad Request")
)

// request sends one request and decodes a JSON answer into out. p is a
// path on the BMC (an @odata.id); anything else is refused, so that a BMC
// cannot send our credentials elsewhere.
func (d *redfishDriver) request(ctx context.Context, method, p string, body any, hdr http.Header, out any, auth bool) (http.Header, error) {
	if !localPath(p) {
		return nil, fmt.Errorf("power: redfish: the BMC named %q, not a /redfish/ path on itself", p)
	}
	ref, _ := url.Parse(p)
	u := d.base.ResolveReference(ref)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, redfishDefaultTimeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("power: redfish: %w", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, fmt.Errorf("power: redfish: %w", err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("OData-Version", "4.0")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		if d.token != "" {
			req.Header.Set("X-Auth-Token", d.token)
		} else {
			req.SetBasicAuth(d.user, d.pass)
		}
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, redfishTransportError(ctx, method, u.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, redfishMaxBody+1))
	if err != nil {
		return nil, redfishTransportError(ctx, method, u.Path, err)
	}
	if len(data) > redfishMaxBody {
		return nil, fmt.Errorf("power: redfish %s %s: response larger than %d bytes", method, u.Path, redfishMaxBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, redfishStatusError(method, u.Path, resp.StatusCode, data)
	}
	if out != nil && len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("power: redfish %s %s: decoding the answer: %w", method, u.Path, err)
		}
	}
	return resp.Header, nil
}

// localPath reports whether p (an @odata.id or link from the BMC) is a
// /redfish/ path on the BMC itself.
func localPath(p string) bool {
	ref, err := url.Parse(p)
	return err == nil && !ref.IsAbs() && ref.Host == "" && strings.HasPrefix(ref.Path, "/redfish/") &&
		!strings.Contains(ref.Path, "/../") && !strings.HasSuffix(ref.Path, "/..")
}

func redfishStatusError(method, p string, status int, body []byte) error {
	var rerr struct {
		Error struct {
			Message  string `json:"message"`
			Extended []struct {
				Message string
			} `json:"@Message.ExtendedInfo"`
		} `json:"error"`
	}
	msg := ""
	if json.Unmarshal(body, &rerr) == nil {
		msg = rerr.Error.Message
		if len(rerr.Error.Extended) > 0 && rerr.Error.Extended[0].Message != "" {
			msg = rerr.Error.Extended[0].Message
		}
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg != "" {
		msg = ": " + msg
	}
	var kind error
	switch status {
	case http.StatusUnauthorized:
		kind = errUnauthorized
	case http.StatusForbidden:
		kind = fmt.Errorf("403 Forbidden: %w", ErrAuth)
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		kind = fmt.Errorf("%d %s: %w", status, http.StatusText(status), ErrUnsupported)
	case http.StatusBadRequest:
		kind = errBadRequest
	default:
		kind = fmt.Errorf("%d %s", status, http.StatusText(status))
	}
	return fmt.Errorf("power: redfish %s %s: %w%s", method, p, kind, msg)
}

func isTLSError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	return errors.Is(err, errPinMismatch) || errors.As(err, &verr) || errors.As(err, &uerr) ||
		errors.As(err, &herr) || errors.As(err, &cerr)
}

func redfishTransportError(ctx context.Context, method, p string, err error) error {
	switch {
	case isTLSError(err):
		return fmt.Errorf("power: redfish %s %s: the BMC's certificate is not trusted: %w: %w", method, p, ErrAuth, err)
	case errors.Is(err, context.Canceled) && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("power: redfish %s %s: %w", method, p, err)
	}
	return fmt.Errorf("power: redfish %s %s: %w: %w", method, p, ErrUnreachable, err)
}

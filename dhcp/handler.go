package dhcp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// DHCP's well-known ports; ProxyPort is where PXE clients ask a ProxyDHCP
// (or boot) server directly once they have an address.
const (
	ServerPort = 67
	ClientPort = 68
	ProxyPort  = 4011
)

// pxeVendorOptions is option 43 of ProxyDHCP answers: PXE_DISCOVERY_CONTROL
// = 8 ("if a boot file name is in the offer, download it; no boot server
// discovery, no menu"), then End. EDK2 classifies such an offer as a PXE
// 1.0 ProxyDHCP offer and boots the file without a discovery round trip.
var pxeVendorOptions = []byte{pxeDiscoveryCtl, 1, 8, 0xff}

// ipxeNoProxyWait is option 175 for iPXE: sub-option 176 (no-pxedhcp) = 1,
// so iPXE does not wait about 3 s for ProxyDHCP offers.
var ipxeNoProxyWait = []byte{ipxeNoPXEDHCP, 1, 1}

// handle decides the answer to one packet received on the server port, or
// on ProxyPort when onProxyPort is set. It returns the reply and where to
// send it, or nil when the packet gets no answer. It never panics on any
// input (FuzzHandlePacket checks this).
func (s *Server) handle(ctx context.Context, b []byte, src *net.UDPAddr, onProxyPort bool) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	start := time.Now()
	mt, out := dhcpv4.MessageType(0), OutcomeHandled
	tr := Trace{OnProxyPort: onProxyPort}
	if src != nil {
		tr.Src = src.IP
	}
	reply, dst := s.decide(ctx, b, src, onProxyPort, &mt, &out, &tr)
	if reply != nil {
		out = OutcomeAnswered
	}
	s.traced(&tr, mt, out, reply)
	s.stats.packets[typeIndex(mt)][outcomeIndex(out)].Add(1)
	s.stats.latency.observe(time.Since(start))
	return reply, dst
}

// note records why a packet got no answer: in *out, for Packets, and in
// the matching total of Stats.
func (s *Server) note(out *Outcome, o Outcome) {
	*out = o
	switch o {
	case OutcomeIgnored, OutcomePolicyIgnored, OutcomeNotBootClient, OutcomeNotForUs, OutcomeNoAddress:
		s.stats.ignored.Add(1)
	case OutcomeUnsupportedArch:
		s.stats.unsupportedArch.Add(1)
	case OutcomeNoPool:
		s.stats.noPool.Add(1)
	case OutcomePoolExhausted:
		s.stats.poolExhausted.Add(1)
	case OutcomePolicyError:
		s.stats.policyErrors.Add(1)
	case OutcomeMalformed:
		s.stats.malformed.Add(1)
	}
}

// decide is handle's work; it sets *mtOut to the packet's type once known,
// *out to why it gets no answer, and fills in tr the client's side of
// the packet's trace.
func (s *Server) decide(ctx context.Context, b []byte, src *net.UDPAddr, onProxyPort bool, mtOut *dhcpv4.MessageType, out *Outcome, tr *Trace) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	p, err := parsePacket(b)
	if err != nil {
		s.note(out, OutcomeMalformed)
		s.log.Debug("dhcp: dropped packet", "from", src, "err", err)
		return nil, nil
	}
	mt := p.MessageType()
	*mtOut = mt
	s.countRequest(mt)
	req, err := describe(p, s.cfg.ServerIP)
	if s.cfg.Trace != nil {
		tr.Request, tr.MAC, tr.UserClass = req, req.MAC, userClass(p.Options[optUserClass])
	}
	if err != nil {
		if errors.Is(err, errUnsupportedArch) {
			s.note(out, OutcomeUnsupportedArch)
			tr.Reason = err.Error()
		} else {
			s.note(out, OutcomeMalformed)
		}
		s.log.Debug("dhcp: dropped packet", "from", src, "type", mt, "mac", p.ClientHWAddr, "err", err)
		return nil, nil
	}
	log := s.log.With("type", mt.String(), "mac", req.MAC.String(), "xid", p.TransactionID.String())
	if req.RelayAddr != nil {
		log = log.With("relay", req.RelayAddr.String())
	}

	var d Decision
	if req.Boot() && (mt == dhcpv4.MessageTypeDiscover || mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform) {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.PolicyTimeout)
		d, err = s.cfg.Policy.Boot(pctx, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil { // shutting down: not the policy's fault
				return nil, nil
			}
			s.note(out, OutcomePolicyError)
			tr.Reason = "the boot policy failed: " + err.Error()
			log.Warn("dhcp: boot policy failed; not answering", "err", err)
			return nil, nil
		}
		if d.Ignore {
			s.note(out, OutcomePolicyIgnored)
			tr.Reason = d.Reason
			log.Debug("dhcp: policy ignores this machine")
			return nil, nil
		}
	}

	var reply *dhcpv4.DHCPv4
	if s.cfg.Mode == ModeProxy {
		reply = s.proxyReply(p, mt, req, d, onProxyPort, log, out)
	} else if !onProxyPort {
		reply = s.fullReply(p, mt, req, d, log, out)
	}
	if reply == nil {
		return nil, nil
	}
	dst := replyDest(p, reply, src, onProxyPort)
	switch reply.MessageType() {
	case dhcpv4.MessageTypeOffer:
		s.stats.offers.Add(1)
	case dhcpv4.MessageTypeAck:
		s.stats.acks.Add(1)
	case dhcpv4.MessageTypeNak:
		s.stats.naks.Add(1)
	}
	log.Debug("dhcp: reply", "reply", reply.MessageType().String(), "yiaddr", reply.YourIPAddr,
		"file", reply.BootFileNameOption(), "to", dst)
	return reply, dst
}

func (s *Server) countRequest(mt dhcpv4.MessageType) {
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		s.stats.discovers.Add(1)
	case dhcpv4.MessageTypeRequest:
		s.stats.requests.Add(1)
	case dhcpv4.MessageTypeRelease:
		s.stats.releases.Add(1)
	case dhcpv4.MessageTypeDecline:
		s.stats.declines.Add(1)
	case dhcpv4.MessageTypeInform:
		s.stats.informs.Add(1)
	}
}

// proxyReply answers as ProxyDHCP: boot options only, to network-boot
// clients only. On port 67 it answers DISCOVER (and a REQUEST addressed to
// it); on ProxyPort, the REQUEST or INFORM a PXE client or iPXE sends once
// it has an address.
func (s *Server) proxyReply(p *dhcpv4.DHCPv4, mt dhcpv4.MessageType, req Request, d Decision, onProxyPort bool, log *slog.Logger, out *Outcome) *dhcpv4.DHCPv4 {
	if !req.Boot() || d.BootFile == "" {
		s.note(out, OutcomeNotBootClient)
		log.Debug("dhcp: proxy mode: not a network-boot client, or no boot file for it")
		return nil
	}
	var rt dhcpv4.MessageType
	switch {
	case onProxyPort && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
		rt = dhcpv4.MessageTypeAck
	case !onProxyPort && mt == dhcpv4.MessageTypeDiscover:
		rt = dhcpv4.MessageTypeOffer
	case !onProxyPort && mt == dhcpv4.MessageTypeRequest && s.cfg.ServerIP.Equal(p.ServerIdentifier()):
		rt = dhcpv4.MessageTypeAck
	default:
		s.note(out, OutcomeNotForUs)
		log.Debug("dhcp: proxy mode: message is for the DHCP server")
		return nil
	}
	r := s.newReply(p, rt)
	if !p.ClientIPAddr.IsUnspecified() && rt == dhcpv4.MessageTypeAck {
		r.ClientIPAddr = p.ClientIPAddr
	}
	s.bootOptions(r, req, d, true)
	return r
}

// fullReply runs the lease state machine of RFC 2131 §4.3.
func (s *Server) fullReply(p *dhcpv4.DHCPv4, mt dhcpv4.MessageType, req Request, d Decision, log *slog.Logger, out *Outcome) *dhcpv4.DHCPv4 {
	now := s.now()
	ciaddr := ipToU32(p.ClientIPAddr)
	sid := p.ServerIdentifier()
	forUs := sid == nil || sid.Equal(s.cfg.ServerIP)

	switch mt {
	case dhcpv4.MessageTypeDiscover:
		pl := s.poolFor(p)
		if pl == nil {
			s.note(out, OutcomeNoPool)
			log.Debug("dhcp: no pool for this subnet")
			return nil
		}
		ip, err := s.leases.offer(pl, req.MAC, ipToU32(p.RequestedIPAddress()), now)
		if err != nil {
			if errors.Is(err, errExhausted) {
				s.note(out, OutcomePoolExhausted)
				s.warnExhausted.Do(func() { log.Warn("dhcp: address pool exhausted", "pool", pl.cidr()) })
			} else {
				s.note(out, OutcomeNoAddress)
				log.Debug("dhcp: no address to offer", "err", err)
			}
			return nil
		}
		r := s.newReply(p, dhcpv4.MessageTypeOffer)
		r.YourIPAddr = u32ToIP(ip)
		s.leaseOptions(r, pl, true)
		s.bootOptions(r, req, d, false)
		return r

	case dhcpv4.MessageTypeRequest:
		if !forUs {
			// The client took another server's offer: free ours now.
			s.leases.forget(req.MAC, now)
			s.note(out, OutcomeNotForUs)
			log.Debug("dhcp: client chose another server", "server", sid)
			return nil
		}
		want := ipToU32(p.RequestedIPAddress())
		if want == 0 {
			want = ciaddr
		}
		if want == 0 {
			s.note(out, OutcomeMalformed)
			log.Debug("dhcp: REQUEST names no address")
			return nil
		}
		pl := s.poolFor(p)
		if pl == nil {
			s.note(out, OutcomeNoPool)
			log.Debug("dhcp: REQUEST from a subnet without a pool")
			return nil
		}
		if err := s.leases.request(pl, req.MAC, want, now); err != nil {
			log.Debug("dhcp: NAK", "requested", u32ToIP(want), "err", err)
			r := s.newReply(p, dhcpv4.MessageTypeNak)
			r.UpdateOption(dhcpv4.OptMessage(err.Error()))
			return r
		}
		r := s.newReply(p, dhcpv4.MessageTypeAck)
		r.ClientIPAddr = p.ClientIPAddr
		r.YourIPAddr = u32ToIP(want)
		s.leaseOptions(r, pl, true)
		s.bootOptions(r, req, d, false)
		return r

	case dhcpv4.MessageTypeRelease:
		if forUs && s.leases.release(req.MAC, ciaddr, now) {
			log.Debug("dhcp: released", "ip", p.ClientIPAddr)
		}
		return nil

	case dhcpv4.MessageTypeDecline:
		if a := ipToU32(p.RequestedIPAddress()); forUs && a != 0 && s.leases.decline(req.MAC, a, now) {
			log.Warn("dhcp: client declined its address (in use by another host?)", "ip", u32ToIP(a))
		}
		return nil

	case dhcpv4.MessageTypeInform:
		pl := s.poolFor(p)
		if ciaddr == 0 || pl == nil {
			s.note(out, OutcomeIgnored)
			return nil
		}
		r := s.newReply(p, dhcpv4.MessageTypeAck)
		r.ClientIPAddr = p.ClientIPAddr
		s.leaseOptions(r, pl, false)
		s.bootOptions(r, req, d, false)
		return r
	}
	return nil
}

// poolFor picks the pool for a request: by the relay's address, else by
// the client's current address (a renewal unicast from a relayed subnet
// comes without giaddr), else the local link's pool.
func (s *Server) poolFor(p *dhcpv4.DHCPv4) *pool {
	if gi := ipToU32(p.GatewayIPAddr); gi != 0 {
		return poolContaining(s.pools, gi)
	}
	if ci := ipToU32(p.ClientIPAddr); ci != 0 {
		return poolContaining(s.pools, ci)
	}
	return s.pools[0]
}

// newReply starts a reply to p: the header fields RFC 2131 Table 3 copies
// from the request, the message type and server identifier, and the echoed
// options: 61 (RFC 6842), 82 (RFC 3046, unchanged) and 97 (PXE requires the
// UUID echoed).
func (s *Server) newReply(p *dhcpv4.DHCPv4, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        p.HWType,
		TransactionID: p.TransactionID,
		Flags:         p.Flags & 0x8000, // only the broadcast bit is defined
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: p.GatewayIPAddr,
		ClientHWAddr:  p.ClientHWAddr,
		Options:       make(dhcpv4.Options),
	}
	r.UpdateOption(dhcpv4.OptMessageType(mt))
	r.UpdateOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP))
	for _, code := range []uint8{dhcpv4.OptionClientIdentifier.Code(), dhcpv4.OptionRelayAgentInformation.Code(), optClientUUID} {
		if v, ok := p.Options[code]; ok {
			r.Options[code] = v
		}
	}
	return r
}

// leaseOptions adds the pool's network settings, and the lease times when
// lease is set (not for INFORM).
func (s *Server) leaseOptions(r *dhcpv4.DHCPv4, pl *pool, lease bool) {
	if lease {
		r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(pl.leaseTime))
		r.UpdateOption(dhcpv4.OptRenewTimeValue(pl.leaseTime / 2))
		r.UpdateOption(dhcpv4.OptRebindingTimeValue(pl.leaseTime * 7 / 8))
	}
	r.UpdateOption(dhcpv4.OptSubnetMask(net.IPMask(u32ToIP(pl.mask))))
	if pl.cfg.Router != nil {
		r.UpdateOption(dhcpv4.OptRouter(pl.cfg.Router.To4()))
	}
	if len(pl.cfg.DNS) > 0 {
		r.UpdateOption(dhcpv4.OptDNS(pl.cfg.DNS...))
	}
	if pl.cfg.DomainName != "" {
		r.UpdateOption(dhcpv4.OptDomainName(pl.cfg.DomainName))
	}
}

// bootOptions adds what a network-boot client needs to load d.BootFile; see
// the package documentation for the rules and why.
func (s *Server) bootOptions(r *dhcpv4.DHCPv4, req Request, d Decision, proxy bool) {
	if !req.Boot() || d.BootFile == "" {
		return
	}
	next := d.NextServer.To4()
	if next == nil {
		next = s.cfg.ServerIP
	}
	if len(d.BootFile) < 128 { // the file field holds 127 bytes and a NUL
		r.BootFileName = d.BootFile
	}
	r.UpdateOption(dhcpv4.OptBootFileName(d.BootFile))
	switch {
	case req.IsIPXE:
		r.ServerIPAddr = next
		r.Options[optIPXEEncap] = ipxeNoProxyWait
		if proxy {
			r.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
			r.Options[optVendorSpec] = pxeVendorOptions
		}
	case req.Firmware.HTTPBoot():
		r.UpdateOption(dhcpv4.OptClassIdentifier("HTTPClient"))
	default:
		r.ServerIPAddr = next
		r.UpdateOption(dhcpv4.OptTFTPServerName(next.String()))
		if proxy {
			r.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
			r.Options[optVendorSpec] = pxeVendorOptions
		}
	}
}

// replyDest is where a reply goes, per RFC 2131 §4.1, except that a client
// without an address is always answered by broadcast (see the package doc).
func replyDest(p, reply *dhcpv4.DHCPv4, src *net.UDPAddr, onProxyPort bool) *net.UDPAddr {
	if onProxyPort && src != nil {
		if src.IP.IsUnspecified() {
			return &net.UDPAddr{IP: net.IPv4bcast, Port: src.Port}
		}
		return src
	}
	nak := reply.MessageType() == dhcpv4.MessageTypeNak
	if gi := p.GatewayIPAddr.To4(); gi != nil && !gi.IsUnspecified() {
		if nak {
			reply.SetBroadcast() // the relay must broadcast it on the client's link
		}
		return &net.UDPAddr{IP: gi, Port: ServerPort}
	}
	if ci := p.ClientIPAddr.To4(); !nak && ci != nil && !ci.IsUnspecified() {
		return &net.UDPAddr{IP: ci, Port: ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
}

// now is the clock, replaceable in tests.
func (s *Server) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

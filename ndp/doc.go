// Package ndp is a region's IPv6 router-advertisement responder: it tells
// the machines booting on a provisioning network, at once, that there is no
// IPv6 to configure there, so that iPXE does not wait for it.
//
// # Why
//
// iPXE configures every interface with all its configurators at once
// (DHCPv4 and "ipv6") and its autoboot goes on only when all of them are
// done. Its IPv6 configurator (src/net/ndp.c in ipxe/ipxe; the same code in
// Debian's 1.0.0+git-20190125.36a4c85 that the tests boot and in
// 0ab2277c40f1 of August 2026) works like this:
//
//   - start_ipv6conf starts a retry timer with limits IPV6CONF_MIN_TIMEOUT
//     (1/8 s) and IPV6CONF_MAX_TIMEOUT (3 s); on every expiry
//     (ipv6conf_expired) it sends a router solicitation to ff02::2 and
//     backs off (retry.c doubles the timeout and fails once it would pass
//     the maximum; while the link is blocked, each expiry is deferred by
//     IPV6CONF_BLOCK_TIMEOUT, up to IPV6CONF_MAX_DEFERRALS times). Only
//     when the timer fails does ipv6conf_done(-ETIMEDOUT) end the
//     configurator. On a network without IPv6 routers that is the wait
//     this package removes: ~16 s per iPXE start in our QEMU lab.
//   - ipv6conf_rx_router_advertisement takes the first router
//     advertisement that arrives while that timer runs (any RA that passed
//     ndp_rx_options, i.e. whose options all have a non-zero length that
//     fits, and whose ICMPv6 checksum is right), stops the timer and
//     registers the RA's settings (ndp_register_settings: router address,
//     lifetime and options, here none but our link-layer address). Then:
//     "if ( radv->flags & ( NDP_ROUTER_MANAGED | NDP_ROUTER_OTHER ) )" it
//     starts DHCPv6 and stays busy until that ends, "Otherwise, terminate
//     autoconfiguration": ipv6conf_done(ipv6conf, 0), done at once.
//
// So an RA with M=0 and O=0 ends the wait. Ours also carries no prefix
// information option and a router lifetime of 0, so nothing else changes
// for anyone who hears it (RFC 4861 §6.3.4): iPXE forms no SLAAC address
// (a prefix option would be needed) and learns no default router; a Linux
// host (the agent, any server on the segment) likewise adds no address and
// no default route, and keeps a route it has through a real router. The
// RA's cur hop limit, reachable time and retrans timer are 0, which means
// "unspecified" and leaves receivers' values alone.
//
// # What it does
//
// A Server, on one interface (the region's DHCP interface):
//
//   - opens a raw ICMPv6 socket bound to the interface (SO_BINDTODEVICE)
//     with an ICMPv6 filter passing router solicitations only, and joins
//     the all-routers group ff02::2 there, which a host that does not
//     forward does not join by itself;
//   - checks each solicitation as RFC 4861 §6.1.1 says (hop limit 255,
//     code 0, well-formed options, no link-layer option from ::), ignores
//     and counts the rest;
//   - answers with the RA above, multicast to all nodes (ff02::1) with hop
//     limit 255 from the interface's link-local address (the kernel picks
//     it), and sends a few unsolicited ones when it starts. Solicitations
//     arriving within MinInterval of the last RA are answered together by
//     one RA at the end of that interval, so a rack powering on at once
//     costs a few RAs per second, not one per machine.
//
// It is for networks without an IPv6 router. Where a real router sends
// RAs, iPXE would take whichever RA comes first: if ours, it would not use
// the router's prefix or DHCPv6. There, turn the responder off (the
// region's --ipv6-ra=false); the real router ends the wait as well.
//
// The package needs Linux (SO_BINDTODEVICE) and CAP_NET_RAW, like the DHCP
// server it runs beside, and an IPv6 link-local address on the interface to
// send from.
package ndp

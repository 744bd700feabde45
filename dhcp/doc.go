// Package dhcp is the DHCPv4 server of a region: it answers the PXE firmware
// of bare-metal machines and the iPXE they chain-load, so that each machine
// boots from its own region, and it can lease addresses on networks that have
// no other DHCP server.
//
// It runs in one of two modes:
//
//   - ModeFull: an authoritative DHCP server with an address pool per subnet
//     (the local link, and one per relay subnet chosen by giaddr),
//     reservations, and leases persisted in a file across restarts. Every
//     client gets an address; network-boot clients also get boot options.
//   - ModeProxy: ProxyDHCP beside an existing DHCP server (PXE 2.1). It
//     answers only network-boot clients, on port 67 and on port 4011, with
//     boot options and no address.
//
// Which boot file a machine gets is not decided here: the server describes
// the client in a Request (MAC, architecture from option 93, PXE or HTTP
// boot firmware, iPXE) and asks a BootPolicy, a one-method interface the
// caller implements. The region implements it over its task state ("answer
// only machines with an active task"); StaticPolicy serves the same files to
// everyone and makes the package usable on its own. Neither this package nor
// StaticPolicy knows where the HTTP server for iPXE scripts and binaries
// listens: the URLs come from the caller's configuration.
//
// What became of each packet (answered with which boot file, or ignored and
// why, with the policy's Decision.Reason) is told to Config.Trace, a
// callback the region feeds into its per-machine boot trace; the package
// never learns where it goes.
//
// The answers encode what real firmware needs (the e2e tests boot SeaBIOS
// and OVMF machines in QEMU through PXE and UEFI HTTP boot against them):
//
//   - BIOS (arch 0): a TFTP file (by default lpmos.IPXEBinaryBIOS,
//     undionly.kpxe), in siaddr + file and options 66/67.
//   - UEFI x64 PXE (arch 7 or 9): a TFTP file (by default
//     lpmos.IPXEBinaryUEFI, snponly.efi). In full mode no option 60
//     "PXEClient" is sent, because EDK2 rejects an offer carrying it
//     without a valid option 43 and falls through to the next boot option
//     after about 95 s.
//   - UEFI HTTP boot (arch 16, 19): option 60 "HTTPClient" and a URL as the
//     boot file.
//   - iPXE (user class "iPXE"): the URL of its script as boot file, plus
//     option 175 with sub-option 176 (no-pxedhcp) = 1 so it does not wait
//     for ProxyDHCP offers; this also breaks the PXE → iPXE → PXE loop.
//   - ProxyDHCP answers carry option 60 "PXEClient" and a vendor option 43
//     with PXE_DISCOVERY_CONTROL = 8, which tells PXE 2.1 firmware (and
//     EDK2) to download the offered boot file without boot server discovery
//     or a menu.
//   - Option 97 (client machine identifier) is echoed when the client sent
//     it, option 82 (relay agent information) is echoed unchanged to relays,
//     and option 54 names this server in every answer.
//
// Clients that are not booting from the network (no option 93, no vendor
// class PXEClient/HTTPClient, no iPXE user class) get a plain lease in full
// mode and no answer in proxy mode; the policy is not asked about them.
// Network-boot clients of an architecture LPMOS cannot boot (32-bit UEFI,
// codes it does not know) get no answer at all, so their firmware moves on
// to its next boot device instead of loading a file it cannot run.
//
// The package must not: talk to the store or know about tasks (that is the
// policy's job); start a goroutine per packet (a fixed pool of workers
// behind a bounded queue serves all packets, and packets beyond it are
// dropped and counted); listen on more than the one interface it is given
// (SO_BINDTODEVICE, and never SO_REUSEADDR/SO_REUSEPORT, so a second server
// on the same port fails loudly instead of silently sharing the packets);
// keep global state such as loggers or metric registries (Stats, Packets,
// DecisionLatency and PoolUsage return the counters, and the caller
// exports them); or crash on bad input: malformed
// packets are dropped, logged at debug level and counted.
//
// Replies follow RFC 2131 §4.1: to the relay at giaddr:67 when relayed, to
// ciaddr:68 when the client has an address, and otherwise broadcast to
// 255.255.255.255:68. The server never unicasts to an address the client has
// not configured yet (that needs a raw socket or an ARP-cache write); every
// client accepts the broadcast, at the cost of one broadcast per reply on
// the link.
package dhcp

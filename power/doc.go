// Package power switches bare-metal machines on and off and chooses their
// next boot device through their baseboard management controllers (BMCs).
//
// A region drives the BMCs of its machines through this package: it sits in
// the data center beside them, while the control plane never reaches a
// machine directly. The region opens a Driver for a machine's BMC with Open
// and asks it for the power state, to switch the power on, off or through a
// cycle, and to boot from the network (PXE) or the local disk once, on the
// next boot only.
//
// Two drivers implement Driver:
//
//   - "ipmi": IPMI 2.0 over the LAN (RMCP+, "lanplus"), through the pure Go
//     github.com/bougou/go-ipmi. Chassis Control switches the power, Get
//     Chassis Status reads it, and the boot flags parameter of Set System
//     Boot Options chooses the next boot device. The tests run it against
//     OpenIPMI's ipmi_sim, a real BMC implementation.
//   - "redfish": a small Redfish client of our own over net/http (the common
//     Go Redfish libraries are not available here). It finds the computer
//     system under /redfish/v1/Systems, reads its PowerState, posts
//     ComputerSystem.Reset and patches its Boot override. It logs in with a
//     Redfish session (X-Auth-Token, deleted again on Close) and falls back
//     to HTTP basic authentication where the BMC has no session service.
//     It speaks only HTTPS and verifies the BMC's certificate against a
//     given CA, or accepts exactly one pinned certificate (its SHA-256
//     fingerprint), or else the system's roots; there is no way to switch
//     verification off.
//
// Errors a caller can branch on are the sentinels ErrInvalid (a bad BMC
// configuration or argument; Validate names the field in a
// *ValidationError), ErrUnreachable (no answer: network, timeout),
// ErrAuth (the BMC refused the credentials, or its certificate was not the
// trusted one) and ErrUnsupported (this BMC cannot do what was asked),
// wrapped with %w. Do retries a call with exponential backoff, but never one
// that failed with ErrAuth, ErrInvalid or ErrUnsupported, which another
// attempt would not change.
//
// The package must not know tasks, the store or the region: what a machine's
// power should be is the caller's decision. It keeps no global state, starts
// no goroutine that outlives a Driver's Close, and logs only through the
// *slog.Logger it is given. It never logs or returns a BMC password: BMC's
// String, GoString and LogValue leave it out, and no error carries it.
package power

// Package lpmos is the shared vocabulary of LPMOS, a bare-metal provisioning
// system: a machine PXE-boots from its data center's region, a small agent in
// RAM reports the hardware, an operator approves it, and the agent installs an
// operating system. This package holds the few types every other package
// speaks (MAC addresses, firmware and processor architectures, the iPXE
// binaries each firmware boots and where Debian installs them, region and
// task IDs, what counts as safe text, a hostname and an authorized SSH key)
// and this map of the system. It imports only the standard library
// so that anything may import it without dragging in dependencies.
//
// # Map of the packages
//
// Each package owns one thing; the names below are relative to the module
// path github.com/lpmos/lpmos.
//
//	lpmos (this package)  shared vocabulary: MAC, Arch, Firmware and the iPXE
//	                      binary each firmware gets, ID validation, text,
//	                      hostname and SSH key checks
//	hardware              the hardware Info model (CPU, memory and DIMMs, disks,
//	                      NICs, BIOS, system, board) and the collectors that
//	                      fill it in on the machine itself
//	store                 the Store interface: a revisioned key-value store with
//	                      Get, List by prefix, compare-and-swap transactions,
//	                      prefix watches that resume from a revision, and leases
//	store/etcd            Store over etcd: the client, which dials a cluster
//	store/etcd/embedded   an etcd member in-process (the single-machine
//	                      default), its certificates and snapshot restore;
//	                      the only package that links etcd's server
//	store/memory          Store in memory that behaves like etcd (revisions,
//	                      watch replay, lease expiry), for tests and demos
//	store/storetest       the conformance suite both implementations must pass
//	task                  the task model, its closed set of states and events,
//	                      the pure transition table, the /lpmos/ key schema and
//	                      task.Service, which runs transitions over a Store;
//	                      task.View, the watch-fed copy of tasks that the
//	                      control plane and each region serve from
//	ipxe                  rendering per-machine iPXE scripts; locating the iPXE
//	                      binaries (undionly.kpxe, snponly.efi, ipxe.efi) on disk
//	dhcp                  DHCPv4 server, full or ProxyDHCP, with the PXE details
//	                      (option 93 arch, vendor class, iPXE loop break, relays)
//	pxe                   TFTP and HTTP servers for boot files
//	trace                 per-machine boot traces: the event model and the
//	                      bounded, coalescing Recorder a region writes them with
//	osimage               the image catalogue: OS images (and network
//	                      installers) registered with their SHA-256 under
//	                      /lpmos/images/, which each region's leader
//	                      downloads, verifies and offers
//	agent                 the agent's wire protocol and client, and the runner
//	                      that collects, reports, waits for approval and
//	                      installs; agent/... holds installers and the
//	                      initramfs builder
//	region                one per data center: composes dhcp, pxe and ipxe,
//	                      serves the agent API, watches its own tasks in the
//	                      store and heartbeats on a lease; region.Server runs
//	                      it with its HTTP, TFTP and DHCP services
//	region/templates      preseed, kickstart, autoinstall and cloud-init
//	                      answer files, overridable from the store
//	controlplane          the operators' side: REST API, audit, rate limits,
//	                      list cache, embedded dashboard, metrics; wires:
//	controlplane/auth     tokens, hashed tokens, HS256/RS256 JWTs, roles
//	controlplane/hub      the WebSocket hub streaming task changes
//	controlplane/webhook  signed, retried webhooks, sent once across replicas
//	controlplane/web      the embedded dashboard (static files, strict CSP)
//	internal/...          helpers shared by several packages that are not API:
//	                      httpjson, the JSON error contract of both HTTP APIs;
//	                      httpserve, their timeouts and connection caps;
//	                      cmdutil, the binaries' shared flags; and for tests
//	                      etcdtest, netns, testlab (QEMU), cmdtest, agenttest,
//	                      apicontract, testimage, syncbuf
//	examples/...          thin binaries (allinone, control-plane, region, agent,
//	                      mkinitramfs, embed) that wire the packages together,
//	                      and lpmosctl, the command-line client
//	e2e                   end-to-end tests: QEMU machines provisioned through
//	                      the real binaries
//
// # Dependency direction
//
// Each line says what a package may import from this module:
//
//	examples/...             anything (and nothing imports examples)
//	internal/...             anything but examples
//	internal/httpjson        task
//	internal/httpserve       nothing of ours (it serves any handler)
//	controlplane             task, store, hardware, controlplane/...,
//	                         internal/httpjson, internal/httpserve
//	controlplane/hub         task, hardware, controlplane/auth,
//	                         internal/httpjson
//	controlplane/webhook     task, store
//	controlplane/auth        only lpmos
//	region/...               task, dhcp, pxe, ipxe, agent, store, hardware,
//	                         internal/httpjson, internal/httpserve
//	agent/...                hardware
//	task                     store, hardware
//	store/etcd, store/memory,
//	store/storetest          store
//	store/etcd/embedded      store, store/etcd
//	hardware, store, dhcp,   only lpmos
//	pxe, ipxe
//	lpmos                    the standard library only
//
// Every package may import lpmos; lpmos imports nothing of ours. task, region
// and controlplane depend on the store interface, never on store/etcd or
// store/memory; only binaries and tests pick an implementation. Tests may
// also use store/memory, store/etcd, store/etcd/embedded and internal/...
// freely. deps_test.go in
// this directory enforces the table, so adding a package is a conscious
// decision.
//
// # The only channel: the store
//
// The control plane and the regions never talk to each other directly. They
// share etcd, under the /lpmos/ key prefix (tasks/{id}/..., regions/{r}/...,
// agents/{mac}/..., config/...), and learn of each other's writes through
// watches. That keeps the control plane stateless: any number of replicas can
// serve operators, and a region needs no route to them. Every state change is a
// compare-and-swap transaction that also appends to the task's timeline, so
// two racing writers cannot both win.
//
// # How a machine flows through
//
//  1. An operator creates a task (MAC, region, OS) through the control plane;
//     it is stored as pending.
//  2. The region that owns the task sees it through its watch, prepares what
//     the machine will need and marks it ready.
//  3. The machine PXE-boots: its firmware asks DHCP, which answers with a boot
//     file chosen by the client's Arch (Firmware says which iPXE binary); the
//     firmware fetches iPXE over TFTP (or HTTP for UEFI HTTP boot); iPXE asks
//     DHCP again and gets the URL of its own script, which the region renders
//     over HTTP. The task is now booting.
//  4. The script boots a kernel and an initramfs holding the agent. The agent
//     collects hardware.Info and reports it; the task waits in
//     pending_approval.
//  5. An operator looks at the hardware and approves the task (approved) or
//     rejects it.
//  6. The agent receives the install plan, writes the image while reporting
//     progress (installing), reports the result and reboots: completed.
//
// Any step can end the task instead: failed (something broke, with an error
// and logs), rejected (the operator said no) or cancelled (withdrawn before
// it finished).
package lpmos

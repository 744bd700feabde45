// Package machine owns LPMOS's inventory: one record per machine, keyed by
// its MAC under /lpmos/machines/{mac}/, that lives longer than any task.
// A record holds what the operator says about the machine (its region,
// tags, and the BMC that powers it) and what the region learned from it
// (its hardware at the last report, where and when that came from, the
// outcome of the last power action). The operator-owned and region-owned
// parts are separate keys, so that neither writer ever overwrites the
// other's.
//
// BMC passwords are sealed with AES-GCM under a key the operator provides
// in a file (Sealer): the store holds only ciphertext bound to the
// machine's MAC, the API shows only whether a password is set, and only
// the region that drives the BMC unseals it (Service.Credentials).
//
// The package knows the store through store.Store and hardware through
// hardware.Info; it knows nothing of tasks, HTTP or BMC protocols. The
// control plane serves machines from a View (one list and one watch, like
// task.View); the region records reports with Service.Observe and power
// results with Service.SetPower.
package machine

// Package apicontract holds no code: its tests hold the control plane's
// REST API and the region's agent API to one error contract, by provoking
// each task error through the real handlers of both and comparing the
// answers. They live here because only internal packages may import both
// controlplane and region.
package apicontract

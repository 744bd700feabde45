// Package client is the typed Go client of the LPMOS control plane: its
// REST API under /api/v1 (tasks, batch creates, bulk moves, retries, the
// dead-letter list, regions, machines and their power, auto-approval
// rules, whoami) and its WebSocket /ws of live task
// changes. Tools, tests, the
// fleet bench and lpmosctl drive LPMOS through it rather than through
// hand-written HTTP, so that they share one reading of the API's answers.
//
// It speaks the API's vocabulary (task.Task, task.CreateRequest,
// task.Status, machine.Machine, rule.Rule, hardware.Info, the root
// package's IDs) and nothing of its implementation: it never imports the
// control plane, a region or a store implementation, and everything it
// knows comes over HTTP.
//
// Every refused request comes back as an *Error carrying the HTTP status,
// the API's error code and field, the message and any Retry-After; callers
// branch on it with errors.Is and the sentinels (ErrNotFound,
// ErrInvalidTransition, ErrConflict, ...) or with IsCode. The task
// service's own sentinels match too, so errors.Is(err, task.ErrNotFound)
// holds for a 404 as it does for task.Service.
//
// Watch follows tasks over the WebSocket and keeps following them across
// dropped connections: it reconnects with backoff and jitter and, once the
// server has acknowledged the subscription, reads the tasks over REST and
// reports every status that moved while it was away, so that a caller
// never misses a task's final state. Status events are deduplicated by
// revision, so each revision of a task is reported at most once and a
// task's statuses arrive in revision order.
//
// A Client is safe for concurrent use; its zero configuration talks to
// one base URL without a token.
package client

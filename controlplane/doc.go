// Package controlplane is the operators' side of LPMOS: the REST API for
// install tasks, its audit log and rate limits, the task and region caches,
// the embedded web dashboard and Prometheus metrics, and the wiring of its
// parts: controlplane/auth (who may sign in, with which role),
// controlplane/hub (the WebSocket hub that streams live task changes) and
// controlplane/webhook (notifications). Its error bodies and the mapping of
// task errors to them are internal/httpjson's, shared with the region's
// agent API.
//
// It is stateless: every task lives in the store and any number of control
// planes can serve the same store. Each keeps one task.View of every task,
// whose single watch feeds its lists, its WebSocket hub and its notifier;
// lists are served from that view, never by ranging over etcd per request. It talks to regions only through the store, and never imports
// region, dhcp or agent code.
//
// # REST API (JSON, under /api/v1, "Authorization: Bearer <token>")
//
//	POST   /api/v1/tasks                create (operator)   201 {task_id, status, created_at, links{self, approve}}
//	GET    /api/v1/tasks                list (viewer)       ?region_id=&status=a,b&limit=&offset= → {tasks, total, limit, offset}
//	GET    /api/v1/tasks/{id}           get (viewer)        the whole task; ETag is its revision
//	PUT    /api/v1/tasks/{id}/approve   approve (operator)  {approved: true, notes} → {task_id, status, approval, next_status}
//	PUT    /api/v1/tasks/{id}/reject    reject (operator)   {reason} → {task_id, status, approval}
//	DELETE /api/v1/tasks/{id}           cancel (operator)   204; ?reason= is recorded
//	GET    /api/v1/regions              regions (viewer)    {regions: [{region_id, status, last_heartbeat, capabilities}]}
//	GET    /api/v1/whoami               (viewer)            {subject, role}
//
// A list entry is flat, what a table row needs: {task_id, status, revision,
// region_id, target_mac, os_type, os_version, created_at, created_by, tags,
// progress, error}; GET of one task returns the whole task with its fields
// under metadata, plus hardware, approval and timeline.
//
// Mutations accept "If-Match: <revision>" to act only if the task's status
// has not moved since that read. Errors are
// {"error": {"code": "...", "message": "...", "field": "..."}} with status
// 400 invalid_request (malformed JSON, unknown fields, bad MAC, region or
// OS), 401 unauthorized, 403 forbidden, 404 not_found, 409
// invalid_transition (the task's status does not allow the call) or
// conflict (the task changed since If-Match, or the MAC already has an
// active task), 413 too_large, 415 unsupported_media_type, 429
// rate_limited, 503 unavailable. Nothing is written when an error is
// returned. The region's agent API answers its errors the same way.
//
// # WebSocket /ws
//
// Authenticate with the subprotocols ["lpmos.v1", "bearer.<token>"]
// (browsers cannot set headers on a WebSocket); the server selects
// "lpmos.v1". Client messages: {"type": "subscribe"|"unsubscribe",
// "task_id": "<id>" or "*" for all tasks}. Server messages:
//
//	{"type": "status",   "task_id", "status", "region_id", "revision"}
//	{"type": "progress", "task_id", "stage", "percentage", "message"}
//	{"type": "hardware", "task_id", "hardware": {...}}
//
// Status messages are never dropped (a client too slow to take them is
// disconnected and resyncs over REST when it reconnects); progress is
// coalesced to at most one message per task per second per client.
package controlplane

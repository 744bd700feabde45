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
//	POST   /api/v1/tasks                create (operator)   201 {task_id, status, created_at, links{self, approve}}; Idempotency-Key: a repeat → 200
//	POST   /api/v1/tasks/batch          create many (operator) {tasks: [create bodies]} → 200 {created, failed, results}
//	POST   /api/v1/tasks/approve        approve many (operator) {ids | filter, limit, notes} → 200 {matched, truncated, moved, failed}
//	POST   /api/v1/tasks/reject         reject many (operator)  {ids | filter, limit, reason}
//	POST   /api/v1/tasks/cancel         cancel many (operator)  {ids | filter, limit, reason}
//	GET    /api/v1/tasks                list (viewer)       ?region_id=&status=a,b&mac=&mac_prefix=&os_type=&os_version=&tag=k=v&created_by=&sort=&limit=&offset= → {tasks, total, limit, offset}
//	GET    /api/v1/tasks/{id}           get (viewer)        the whole task; ETag is its revision
//	PUT    /api/v1/tasks/{id}/approve   approve (operator)  {approved: true, notes} → {task_id, status, approval, next_status}
//	PUT    /api/v1/tasks/{id}/reject    reject (operator)   {reason} → {task_id, status, approval}
//	DELETE /api/v1/tasks/{id}           cancel (operator)   204; ?reason= is recorded
//	POST   /api/v1/tasks/{id}/retry     retry (operator)    no body → 201 {task_id, status, created_at, revision, links, retry_of, attempt, max_attempts}
//	GET    /api/v1/dlq                  dead letters (viewer) ?kind=tasks|webhooks&limit=&offset= → {entries, total, limit, offset}
//	DELETE /api/v1/dlq/{kind}/{id}      acknowledge (operator) 204; 404 if there is none
//	GET    /api/v1/regions              regions (viewer)    {regions: [{region_id, status, last_heartbeat, leader, capabilities, active_tasks}]}
//	DELETE /api/v1/regions/{id}         forget a region (admin) 204; 409 region_online or region_active_tasks
//	GET    /api/v1/images               image catalogue (viewer) {images: [{id, region, url, sha256, format, os_type, os_version, arch, created_at, created_by, regions: [{region_id, state, reason, bytes}]}]}
//	POST   /api/v1/images               register (admin)    {id, region, url, sha256, format, os_type, os_version, arch} → 201 the image; 409 if taken
//	GET    /api/v1/images/{id}          get (viewer)        the image with its state in each region
//	DELETE /api/v1/images/{id}          delete (admin)      204; the regions remove their copies
//	GET    /api/v1/whoami               (viewer)            {subject, role}
//	GET    /api/v1/openapi.json         (no token)          this API's OpenAPI 3.1 description
//
// openapi.yaml, served as JSON at OpenAPIPath, describes every endpoint,
// the machines and rules ones included: its role, parameters,
// bodies, answers and the error body. The endpoints table in server.go is
// the list of routes; the tests hold the document to it and check every
// request and answer of the API tests against the document.
//
// A caller's subject says how it signed in and who it is: "token:<name>"
// for a static token given in clear text (the admin token), "hashed:<name>"
// for a token from the token file, "jwt:<sub>" for a JWT. That subject is
// what whoami returns, what created_by, approved_by and rejected_by record,
// the audit log's actor and the key of the per-caller rate limit, so a JWT
// whose sub is "admin" is never mistaken for the admin token.
//
// JWTs may be verified against an identity provider's JWKS URL (OIDC ID
// tokens): Run keeps the key set fresh, and a token's role can come from
// any claim (e.g. "groups") through a value → role map; see
// auth.JWTConfig.
//
// A list entry is flat, what a table row needs: {task_id, status, revision,
// region_id, target_mac, os_type, os_version, created_at, created_by, tags,
// progress, error, attempt, max_attempts, retry_of, retried_as}; GET of one task returns the whole task with its fields
// under metadata, plus hardware, approval and timeline.
//
// A region is listed once it has written any of its keys (heartbeat,
// status, capabilities); status is "online" while its heartbeat key lives
// and it has not said "offline". active_tasks counts its tasks that have not
// ended, by status ({"pending_approval": 3, ...}; {} for none), from this
// replica's task view; it is null while that view is still loading. Tasks
// of a region that never registered are not counted anywhere.
//
// List filters combine (a task passes all that are given): status is
// repeatable or comma-separated and matches any of them; mac is one
// machine in any spelling ParseMAC takes; mac_prefix is the start of a MAC
// ("52:54:00", "5254-00", any case); tag=key=value is repeatable and
// matches tasks carrying all of them; created_by is the creator's subject,
// exactly (with its prefix: created_by=jwt:alice). sort is -created_at
// (newest first, the default), created_at, status (lifecycle order,
// pending first; newest first within a status) or -status; ties go by
// task ID so pages are stable. A bad value is 400
// invalid_request with field naming the parameter.
//
// # Batch and bulk calls
//
// An operator of thousands of machines does not click thousands of times.
// A batch create takes 1 to 1,000 (task.MaxBatch) create bodies in "tasks";
// each item is created in its own transaction with exactly the validation
// and errors of a single create, and its own "task.create" audit record
// (with batch and index). The answer is 200 with one result per item, in
// order: {index, task: {a single create's answer}} or {index, error: {code,
// message, field}}. A failed item writes nothing. An item whose MAC (in any
// spelling) an earlier item of the batch already names fails with
// invalid_request on target_mac, whatever became of the earlier item; a
// MAC with an active task fails with conflict, as a single create does.
// Items take the free slots under the active-task caps (below) in their
// order; every item past them fails alike with capacity.
// The whole batch is refused (400, field tasks; nothing written) when it
// is empty or longer than 1,000, and as any request is when its body is
// malformed or larger than Config.MaxBatchBodyBytes (413, default 4 MiB).
//
// Bulk approve, reject and cancel take either "ids" (1 to 1,000 task IDs)
// or a "filter" object {region_id, status: [...], tags: {k: v}, mac_prefix,
// os_type, os_version, created_by} with the same meaning as the list's
// parameters, never both. A filter selects, from this replica's task view,
// only tasks in a status the move applies to (approve and reject:
// pending_approval; cancel: any status not ended), oldest first, at most
// "limit" (default and maximum 1,000); naming another status in it is 400
// on filter.status, a filter without any criterion is 400 (to select every
// task the move applies to, name its status), and a filter that selects no
// task is 404 not_found with field filter. Each selected task is moved by
// its own transaction, exactly as the single call moves it, with its own
// audit record (action task.approve, task.reject or task.cancel, with
// batch naming the bulk call); the call itself is audited too. The answer
// is 200 {matched, truncated, moved: [{task_id, status, revision}], failed:
// [{task_id, error: {code, message, field}}]}: matched counts the tasks
// selected, truncated says the filter matched more than limit (call again
// for the next ones), and each failed task says why it did not move
// (invalid_transition for the wrong status, not_found, conflict, or
// invalid_request for a malformed or repeated ID) and was not written.
// A reject needs a reason; notes and reasons are checked once, before
// anything moves.
//
// Single-task mutations accept "If-Match: <revision>" (decimal digits,
// optionally quoted as the ETag is; anything else is 400) to act only if
// the task's status has not moved since that read. Every mutation writes
// an audit record naming the task (for a create, the task it made). Served
// over TLS, every response carries Strict-Transport-Security (one year). Errors are
// {"error": {"code": "...", "message": "...", "field": "..."}} with status
// 400 invalid_request (malformed JSON, unknown fields, bad MAC, region or
// OS), 401 unauthorized, 403 forbidden, 404 not_found, 409
// invalid_transition (the task's status does not allow the call) or
// conflict (the task changed since If-Match, or the MAC already has an
// active task) or capacity (too many active tasks) or a retry's refusal
// (above), 413 too_large, 415 unsupported_media_type, 429
// rate_limited, 422 idempotency_key_reused, 503 unavailable (with
// Retry-After: the store is electing a leader or out of reach, or the
// replica is still loading). Nothing is written when an error is
// returned, except that a write answered 503 may have been applied before
// the store stopped answering. The region's agent API answers its errors
// the same way.
//
// # Idempotent creates
//
// POST /api/v1/tasks takes an Idempotency-Key header (IdempotencyKeyHeader):
// the new task's ID is a name-based UUID of the caller's subject and the
// key, so a repeat of a create that was applied finds that task and is
// answered 200 with Idempotent-Replayed: true (the task as it is now),
// while a create that was not applied is simply made. The same key with
// another request (region, MAC, OS, disk layout, network, tags) is 422
// idempotency_key_reused. A caller that retries after a 503, a timeout or
// a lost connection should always send a key.
//
// # Retries and the dead-letter list
//
// POST /api/v1/tasks/{id}/retry starts a new attempt of a failed or
// cancelled task: a NEW task (new ID, status pending, created_by the
// caller) with the same region, machine, OS, disk, network and tags, its
// metadata naming the task it retries (retry_of) and its attempt number
// (attempt: 1 for a fresh task, one more per retry). The old task stays
// as it ended; its timeline gets a "retried" entry whose retried_as names
// the new task. Both are one transaction, which also claims the machine
// as a create does, so of two retries racing exactly one wins. A chain
// makes at most max_attempts attempts (Config.MaxAttempts, --max-attempts,
// default 3), fixed in the metadata of its first attempt and handed down.
// Refusals are 409 with their own codes: not_retryable (the task is not
// failed or cancelled), already_retried, attempts_exhausted (it was the
// last allowed attempt) and active_task (its machine has an active task:
// one active task per MAC); they write nothing. A retry counts against
// the active-task caps as a create does, and If-Match applies to the task
// retried.
//
// With Config.AutoRetry (--auto-retry, off by default) failed tasks are
// retried automatically, by actor "control-plane:auto-retry", after 30 s
// doubled per attempt up to 10 min (AutoRetryBase, AutoRetryCap), the
// second half of it jitter drawn from the task ID so that every replica
// agrees on the time. Every replica checks; the retry transaction is the
// claim, so each failure is retried once. Left to the operator: failures
// whose code retrying cannot fix (Config.NoAutoRetryCodes, by default
// no_disk, disk_too_small, bad_image, no_checksum, boot_files_missing), a
// machine given a newer task meanwhile, and a retry that fell due more
// than an hour ago (turning auto-retry on does not retry old failures).
//
// A task that fails on its last allowed attempt gets a dead-letter record
// under /lpmos/dlq/tasks/{id}, written by the very transaction that fails
// it, whoever fails it (a region, the pending timeout): {task_id,
// region_id, target_mac, os_type, os_version, attempts, max_attempts,
// retry_of, error {code, stage, message, occurred_at}, timeline, dead_at}.
// It outlives the task's retention purge. A webhook delivery that gave up
// is recorded under /lpmos/dlq/webhooks/{delivery id} by the replica that
// made it: {id, url (without credentials, query or fragment), event,
// task_id, status, revision, attempts, error, first_attempt_at,
// gave_up_at, replica_id}, on a lease of webhook.Config.DeadLetterTTL
// (7 days). GET /api/v1/dlq lists both, newest first, each entry {kind,
// id, at, task | webhook}, from a watch-fed cache; DELETE acknowledges
// one. A task cancelled on its last attempt is the operator's doing and
// gets no record.
//
// /metrics exports lpmos_regions_offline (regions listed offline),
// lpmos_dead_letters{kind} and lpmos_task_retries_total{trigger="manual"|"auto"}.
//
// # Tasks no region picks up
//
// A task no region picks up (its region is down, or was never deployed)
// would stay pending for ever: Config.PendingTimeout (default 1 h) fails
// it with code "region_unavailable".
//
// # Capacity
//
// Every task and its history live in the store, and etcd refuses every
// write once its database reaches its quota (2 GiB by default), including
// the regions' progress reports. So a create is refused with 409 capacity
// (naming the cap) when Config.MaxActiveTasks tasks that have not ended
// exist (default 100,000), or Config.MaxActiveTasksPerRegion in its region
// (default 20,000); a task that ends frees its slot, and Retention deletes
// ended ones. The count comes from this replica's task view, which holds
// its own earlier creates (each create waits for the view to reach its
// write), so with several replicas a cap can be passed by the creates in
// flight at that moment (on other replicas, or concurrent requests on this
// one, each counting from the view as it found it): the caps are soft by
// that much. A batch item takes its slot before the task service has
// checked the rest of it, so an item refused for other reasons (an unknown
// OS, a machine with an active task) still uses up a slot of that batch.
// While the view is first loading, a capped create is 503.
// With an etcd store, /metrics exports lpmos_store_db_size_bytes and
// lpmos_store_db_quota_bytes, read from etcd at scrape time, for an alert
// well before the quota.
//
// # Webhooks
//
// Each notification (see controlplane/webhook) is a JSON POST signed as
// Standard Webhooks do: headers webhook-id (the same across the retries of
// one delivery), webhook-timestamp (Unix seconds of the attempt) and
// webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>", keyed
// with the webhook secret's bytes; X-LPMOS-Event names the event. Because
// the timestamp is signed, a receiver that refuses timestamps more than a
// few minutes off (webhook.Verify does) cannot be fed a replay. This
// replaced the X-LPMOS-Signature (HMAC of the body alone) and
// X-LPMOS-Delivery headers.
//
// # WebSocket /ws
//
// Authenticate with the subprotocols ["lpmos.v1", "bearer.<token>"]
// (browsers cannot set headers on a WebSocket); the server selects
// "lpmos.v1". Client messages: {"type": "subscribe"|"unsubscribe",
// "task_id": "<id>" or "*" for all tasks}. Server messages:
//
//	{"type": "subscribed"|"unsubscribed", "task_id"}
//	{"type": "status",   "task_id", "status", "region_id", "revision", "at"}
//	{"type": "progress", "task_id", "stage", "percentage", "message"}
//	{"type": "hardware", "task_id", "hardware": {...}}
//
// The acknowledgement marks where a subscription took effect: every
// change after it is delivered, none before. A client loads over REST once
// it is acknowledged and misses nothing. "at" is the time of the change.
//
// Status messages are never dropped (a client too slow to take them is
// disconnected and resyncs over REST when it reconnects); progress is
// coalesced to at most one message per task per second per client.
package controlplane

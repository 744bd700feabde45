package task

import (
	"strings"

	"github.com/lpmos/lpmos"
)

// The etcd key schema (README.md, "etcd key schema"). It is a contract: other tools (etcdctl,
// dashboards, other LPMOS versions) read these keys, so they do not change.
// One key per field lets each writer touch only what it owns.
//
//	/lpmos/tasks/{id}/metadata|status|hardware|approval|progress|logs|error|timeline
//	/lpmos/regions/{r}/client/heartbeat|status|capabilities
//	/lpmos/regions/{r}/tasks/{id}      (empty value while the task is active)
//	/lpmos/agents/{mac}/info|last_seen|task_id
//	/lpmos/config/global, /lpmos/config/templates/...
//
// Keys beyond the seeds' schema live under prefixes of their own:
//
//	/lpmos/dlq/tasks/{id}              (a task that failed on its last allowed attempt)
//	/lpmos/dlq/webhooks/{delivery id}  (a webhook delivery that gave up)
const (
	Root          = "/lpmos/"
	TasksPrefix   = Root + "tasks/"
	RegionsPrefix = Root + "regions/"
	AgentsPrefix  = Root + "agents/"
	ConfigGlobal  = Root + "config/global"
	// TemplatesPrefix holds install template overrides, one key per name.
	TemplatesPrefix = Root + "config/templates/"
	// DLQPrefix holds the dead-letter list: one record per kind and ID,
	// kept until an operator acknowledges (deletes) it.
	DLQPrefix = Root + "dlq/"
)

// DLQKind is a kind of dead letter: the second segment of its key.
type DLQKind string

// The dead-letter kinds.
const (
	// DLQTasks: a task that failed on its last allowed attempt
	// (DeadTask), written in the transaction that failed it.
	DLQTasks DLQKind = "tasks"
	// DLQWebhooks: a webhook delivery that gave up (written by the
	// control-plane replica that made it).
	DLQWebhooks DLQKind = "webhooks"
)

// DLQKinds lists the dead-letter kinds.
func DLQKinds() []DLQKind { return []DLQKind{DLQTasks, DLQWebhooks} }

// Valid reports whether k is one of the kinds.
func (k DLQKind) Valid() bool { return k == DLQTasks || k == DLQWebhooks }

// DLQKindPrefix holds the dead letters of one kind.
func DLQKindPrefix(kind DLQKind) string { return DLQPrefix + string(kind) + "/" }

// DLQKey is the key of one dead letter.
func DLQKey(kind DLQKind, id string) string { return DLQKindPrefix(kind) + id }

// ParseDLQKey splits a key under DLQPrefix into kind and ID.
func ParseDLQKey(key string) (kind DLQKind, id string, ok bool) {
	rest, found := strings.CutPrefix(key, DLQPrefix)
	if !found {
		return "", "", false
	}
	k, id, found := strings.Cut(rest, "/")
	if !found || id == "" || strings.Contains(id, "/") || !DLQKind(k).Valid() {
		return "", "", false
	}
	return DLQKind(k), id, true
}

// Field is one key of a task.
type Field string

// The task fields.
const (
	FieldMetadata Field = "metadata"
	FieldStatus   Field = "status"
	FieldHardware Field = "hardware"
	FieldApproval Field = "approval"
	FieldProgress Field = "progress"
	FieldLogs     Field = "logs"
	FieldError    Field = "error"
	FieldTimeline Field = "timeline"
)

var fields = []Field{FieldMetadata, FieldStatus, FieldHardware, FieldApproval, FieldProgress, FieldLogs, FieldError, FieldTimeline}

// TaskPrefix is the prefix of all keys of one task.
func TaskPrefix(id string) string { return TasksPrefix + id + "/" }

// TaskKey is the key of one field of a task.
func TaskKey(id string, f Field) string { return TasksPrefix + id + "/" + string(f) }

// ParseTaskKey splits a key under TasksPrefix into task ID and field.
func ParseTaskKey(key string) (id string, f Field, ok bool) {
	rest, found := strings.CutPrefix(key, TasksPrefix)
	if !found {
		return "", "", false
	}
	id, field, found := strings.Cut(rest, "/")
	if !found || id == "" || strings.Contains(field, "/") {
		return "", "", false
	}
	for _, known := range fields {
		if Field(field) == known {
			return id, known, true
		}
	}
	return "", "", false
}

// RegionTasksPrefix holds one key per active task of a region: the region
// lists and watches it to learn of its new tasks, and then watches each
// one's own keys (TaskPrefix) until it ends, never the whole fleet's.
func RegionTasksPrefix(region string) string { return RegionsPrefix + region + "/tasks/" }

// RegionTaskKey marks a task as assigned to a region while it is active.
func RegionTaskKey(region, id string) string { return RegionTasksPrefix(region) + id }

// Region client keys (written by the region, read by the control plane).
func RegionHeartbeatKey(region string) string { return RegionsPrefix + region + "/client/heartbeat" }

// RegionStatusKey holds "online" or "offline".
func RegionStatusKey(region string) string { return RegionsPrefix + region + "/client/status" }

// RegionLeaderKey holds the instance ID of the region process that leads
// its region, on that process's lease (see region's active-passive mode).
func RegionLeaderKey(region string) string { return RegionsPrefix + region + "/client/leader" }

// RegionCapabilitiesKey holds the region's capabilities (JSON).
func RegionCapabilitiesKey(region string) string {
	return RegionsPrefix + region + "/client/capabilities"
}

// Agent keys, per machine.
const (
	AgentFieldInfo     = "info"
	AgentFieldLastSeen = "last_seen"
	AgentFieldTaskID   = "task_id"
)

// AgentKey is the key of one field of a machine's agent record.
// agents/{mac}/task_id names the machine's active task and exists only
// while that task is active: it is what makes "one active task per MAC" a
// single compare in the create transaction.
func AgentKey(mac lpmos.MAC, field string) string {
	return AgentsPrefix + mac.String() + "/" + field
}

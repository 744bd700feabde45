package region

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// agentInfo is what the region keeps under /lpmos/agents/{mac}/info: the
// machine's current agent token, only as a hash, bound to one task.
type agentInfo struct {
	TaskID      string    `json:"task_id"`
	TokenSHA256 string    `json:"token_sha256"`
	IssuedAt    time.Time `json:"issued_at"`
	Firmware    string    `json:"firmware,omitempty"`
	RemoteAddr  string    `json:"remote_addr,omitempty"`
}

// tokens issues and checks per-task agent tokens. A token is random,
// stored only hashed, bound to one task and MAC, replaced each time the
// machine fetches its boot script, and dead once the task ends (the check
// requires the task to be active).
type tokens struct {
	st  store.Store
	now func() time.Time
}

var errBadToken = errors.New("invalid agent token")

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// issue makes a token for a machine's task and stores its hash.
func (tk *tokens) issue(ctx context.Context, mac lpmos.MAC, taskID, firmware, remote string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b[:])
	info, _ := json.Marshal(agentInfo{TaskID: taskID, TokenSHA256: hashToken(tok), IssuedAt: tk.now().UTC(), Firmware: firmware, RemoteAddr: remote})
	if _, err := tk.st.Put(ctx, task.AgentKey(mac, task.AgentFieldInfo), info); err != nil {
		return "", fmt.Errorf("store agent token: %w", err)
	}
	return tok, nil
}

// check verifies a token for a machine and returns the task it is bound
// to. The caller still checks the task is active.
func (tk *tokens) check(ctx context.Context, mac lpmos.MAC, tok string) (string, error) {
	if tok == "" {
		return "", errBadToken
	}
	kv, err := tk.st.Get(ctx, task.AgentKey(mac, task.AgentFieldInfo))
	if errors.Is(err, store.ErrNotFound) {
		return "", errBadToken
	}
	if err != nil {
		return "", err
	}
	var info agentInfo
	if err := json.Unmarshal(kv.Value, &info); err != nil {
		return "", errBadToken
	}
	if subtle.ConstantTimeCompare([]byte(hashToken(tok)), []byte(info.TokenSHA256)) != 1 {
		return "", errBadToken
	}
	return info.TaskID, nil
}

// seen records the agent's last contact (best effort).
func (tk *tokens) seen(ctx context.Context, mac lpmos.MAC) {
	_, _ = tk.st.Put(ctx, task.AgentKey(mac, task.AgentFieldLastSeen), []byte(tk.now().UTC().Format(time.RFC3339Nano)))
}

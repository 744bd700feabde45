package cmdutil_test

import (
	"os"
	"testing"

	"github.com/lpmos/lpmos/internal/etcdtest"
)

// TestMain lets etcdtest.StartTLSMember run its member in this binary
// started again (another process).
func TestMain(m *testing.M) {
	etcdtest.RunExternalMember()
	os.Exit(m.Run())
}

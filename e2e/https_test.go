package e2e_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/testlab"
	"github.com/lpmos/lpmos/internal/testpki"
)

// regionHTTPSURL is where the region serves HTTPS in the HTTPS scenarios.
const regionHTTPSURL = "https://" + testlab.ServerIP + ":8443"

// TestProvisionUEFIHTTPS: OVMF's HTTP boot over https://, with the CA
// handed to the firmware through fw_cfg (etc/edk2/https/cacerts); then
// iPXE (Debian's has no TLS) fetches its script and the agent's kernel
// over plain HTTP, and the agent talks to the region only over TLS,
// pinning the certificate named on its kernel line. The task installs
// the image and completes; the disk is checked byte for byte.
func TestProvisionUEFIHTTPS(t *testing.T) {
	ca := testpki.NewRSACA(t, "lpmos e2e CA") // RSA: the firmware's TLS may lack ECDSA
	leaf := ca.Issue(t, "region", testlab.ServerIP)
	certDB := filepath.Join(t.TempDir(), "cacerts.esl")
	if err := os.WriteFile(certDB, testpki.EDK2CACerts(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	sc := scenario{firmware: lpmos.FirmwareUEFIHTTP, bootPath: pathUEFIHTTP}
	var img []byte
	r := newRig(t, sc, func(bootDir string) { img = makeImage(t, bootDir, imageOS, false) },
		"--region-tls-cert", leaf.CertFile, "--region-tls-key", leaf.KeyFile,
		"--region-tls-listen", testlab.ServerIP+":8443", "--region-url", regionHTTPSURL,
		"--region-boot-url", regionURL, "--region-firmware-url", regionHTTPSURL)
	m, task := r.bootForTask(t, sc, imageOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{
		Extra: []string{"-fw_cfg", "name=etc/edk2/https/cacerts,file=" + certDB},
	})
	checkHardware(t, task["hardware"], testlab.DefaultMAC)
	testlab.Logf(t, r.start, "hardware reported over TLS after %s", time.Since(m.powerOn).Round(100*time.Millisecond))

	r.approve(t, m.id)
	task = waitStatusWhileVM(t, r.srv, m.vm, m.id, "completed", 3*time.Minute)
	testlab.Logf(t, r.start, "task completed: %v", task["progress"])
	serial := strings.ReplaceAll(m.vm.Stop().Serial, "\r", "")

	if !regexp.MustCompile(sc.bootPath).MatchString(serial) {
		t.Errorf("the serial log does not show OVMF's HTTP boot (%s)", sc.bootPath)
	}
	// OVMF prints the URI it boots from.
	if want := "URI: " + regionHTTPSURL + "/boot/ipxe/snponly.efi"; !strings.Contains(serial, want) {
		t.Errorf("the firmware did not boot from %q", want)
	}
	cmdline := regexp.MustCompile(`(?m)Command line: (.*)$`).FindStringSubmatch(serial)
	if cmdline == nil {
		t.Fatalf("the serial log has no kernel command line")
	}
	pin := agent.CertSHA256(leaf.Cert.Raw)
	for _, want := range []string{"lpmos.region=" + regionHTTPSURL, "lpmos.region_cert_sha256=" + pin, "lpmos.task=" + m.id} {
		if !strings.Contains(cmdline[1], want) {
			t.Errorf("kernel command line lacks %q: %s", want, cmdline[1])
		}
	}
	checkDisk(t, m.disk, img)
}

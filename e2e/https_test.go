package e2e_test

import (
	"context"
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
	ca := testpki.NewRSACA(t, "lpmos e2e CA") // RSA: OVMF offers RSA and DHE key exchange only
	r, sc, leaf, img := httpsRig(t, ca)
	m, task := r.bootForTask(t, sc, imageOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{
		Extra: []string{"-fw_cfg", "name=etc/edk2/https/cacerts,file=" + certDB(t, ca)},
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
	// Every TLS client (firmware, agent) accepted the region's certificate.
	if out := r.srv.proc.Output(); strings.Contains(out, "TLS handshake error") {
		t.Errorf("the region logged failed TLS handshakes:\n%s", testlab.Tail(out, 20))
	}
	checkDisk(t, m.disk, img)
}

// TestUEFIHTTPSRefusesAnUntrustedRegion: firmware that trusts another CA
// does not boot from the region: the TLS handshake fails on the region's
// certificate and no agent ever runs.
func TestUEFIHTTPSRefusesAnUntrustedRegion(t *testing.T) {
	r, sc, _, _ := httpsRig(t, testpki.NewRSACA(t, "lpmos e2e CA"))
	id := r.srv.createTaskWith(testlab.DefaultMAC, imageOS, imageVersion, map[string]any{"tags": map[string]string{"cloud_init": "off"}})
	r.srv.waitStatus(id, "ready", 30*time.Second)
	other := testpki.NewRSACA(t, "another CA")
	vm := r.lab.StartVM(context.Background(), t, testlab.VMConfig{Firmware: sc.firmware, MAC: testlab.DefaultMAC,
		Memory: vmMemoryMiB, CPUs: vmCPUs, Disk: testlab.Disk(t, vmDiskSize), Timeout: 3 * time.Minute,
		Extra: []string{"-fw_cfg", "name=etc/edk2/https/cacerts,file=" + certDB(t, other)}})
	waitSerial(t, vm, "URI: "+regionHTTPSURL+"/boot/ipxe/snponly.efi", 90*time.Second)
	waitSerial(t, vm, "Error: Could not retrieve NBP file size from HTTP server.", 90*time.Second)
	serial := vm.Stop().Serial
	if strings.Contains(serial, "LPMOS: booting the agent") {
		t.Errorf("the agent booted from a region the firmware does not trust")
	}
	// The region saw the firmware give up the handshake (OVMF resets the
	// connection after checking the certificate; it sends no alert).
	r.srv.eventually(10*time.Second, "the region logs the failed handshake", func() bool {
		return regexp.MustCompile(`TLS handshake error from 10\.99\.0\.\d+:\d+`).MatchString(r.srv.proc.Output())
	})
	if st := r.srv.task(id)["status"]; st != "ready" {
		t.Errorf("task status %v, want ready: nothing booted", st)
	}
}

// httpsRig is newRig for a region serving HTTPS with a certificate of ca
// for the lab's server address: the agent's URL and UEFI HTTP boot's are
// https, iPXE's (Debian's iPXE has no TLS) plain HTTP.
func httpsRig(t *testing.T, ca *testpki.CA) (*rig, scenario, testpki.Leaf, []byte) {
	t.Helper()
	leaf := ca.Issue(t, "region", testlab.ServerIP)
	sc := scenario{firmware: lpmos.FirmwareUEFIHTTP, bootPath: pathUEFIHTTP}
	var img []byte
	r := newRig(t, sc, func(bootDir string) { img = makeImage(t, bootDir, imageOS, false) },
		"--region-tls-cert", leaf.CertFile, "--region-tls-key", leaf.KeyFile,
		"--region-tls-listen", testlab.ServerIP+":8443", "--region-url", regionHTTPSURL,
		"--region-boot-url", regionURL, "--region-firmware-url", regionHTTPSURL)
	return r, sc, leaf, img
}

// certDB writes ca as the EDK2 CA database OVMF reads from fw_cfg.
func certDB(t *testing.T, ca *testpki.CA) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cacerts.esl")
	if err := os.WriteFile(p, testpki.EDK2CACerts(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

package e2e_test

import (
	"testing"

	"github.com/lpmos/lpmos"
)

// TestUEFIBootsAgentKernel boots an OVMF VM through the firmware's own PXE
// (no iPXE ROM on the NIC): our DHCP answers UEFI PXE (arch 7) with
// snponly.efi over TFTP, iPXE then fetches the agent script as on BIOS.
func TestUEFIBootsAgentKernel(t *testing.T) {
	bootAgentKernel(t, lpmos.FirmwareUEFI, `starting Boot[0-9A-F]* "UEFI PXEv4`)
}

// TestUEFIHTTPBootsAgentKernel boots an OVMF VM through UEFI HTTP boot
// (arch 16): our DHCP answers with option 60 HTTPClient and the URL of
// snponly.efi, iPXE then fetches the agent script.
func TestUEFIHTTPBootsAgentKernel(t *testing.T) {
	bootAgentKernel(t, lpmos.FirmwareUEFIHTTP, `starting Boot[0-9A-F]* "UEFI HTTPv4`)
}

package task

import (
	"time"
)

// Region status values under /lpmos/regions/{r}/client/status.
const (
	RegionOnline  = "online"
	RegionOffline = "offline"
)

// OSOffering is one operating system a region can install.
type OSOffering struct {
	Type    string `json:"os_type"`
	Version string `json:"os_version"`
	// Kind is "image" (a disk image the agent writes) or "installer" (a
	// distribution installer with preseed/kickstart/autoinstall).
	Kind string `json:"kind"`
}

// Capabilities is what a region publishes under
// /lpmos/regions/{r}/client/capabilities: the OSes it can install and the
// services it runs. The control plane offers these in its create form and
// refuses tasks for an OS the region cannot install.
type Capabilities struct {
	OS       []OSOffering      `json:"os"`
	Services map[string]string `json:"services,omitempty"` // e.g. "dhcp": "proxy", "tftp": "running"
	// Images is the state of each catalogue image meant for the region
	// (osimage): only a ready one is among OS.
	Images []ImageState `json:"images,omitempty"`
	// RegionURL is where machines reach the region's HTTP server.
	RegionURL string    `json:"region_url,omitempty"`
	Version   string    `json:"version,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Supports reports whether the region offers osType/osVersion.
func (c *Capabilities) Supports(osType, osVersion string) bool {
	for _, o := range c.OS {
		if o.Type == osType && o.Version == osVersion {
			return true
		}
	}
	return false
}

// Image states a region reports for a catalogue image.
const (
	ImageDownloading = "downloading"
	ImageReady       = "ready"
	ImageFailed      = "failed"
)

// ImageState is a region's copy of one catalogue image: downloading,
// ready (downloaded and verified, offered in OS) or failed, with why.
type ImageState struct {
	ID        string `json:"id"`
	OSType    string `json:"os_type"`
	OSVersion string `json:"os_version"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	Bytes     int64  `json:"bytes,omitempty"`
}

// Image returns the region's state of the catalogue image id.
func (c *Capabilities) Image(id string) (ImageState, bool) {
	for _, s := range c.Images {
		if s.ID == id {
			return s, true
		}
	}
	return ImageState{}, false
}

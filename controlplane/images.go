package controlplane

import (
	"errors"
	"net/http"
	"slices"

	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/task"
)

// Image is a catalogue image with the state of each region's copy.
type Image struct {
	osimage.Image
	// Regions are the regions the image is meant for that the control
	// plane knows (or its one region), each with the state its copy is
	// in: "pending" until the region reported it.
	Regions []ImageRegion `json:"regions"`
}

// ImageRegion is one region's copy of a catalogue image.
type ImageRegion struct {
	Region string `json:"region_id"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

// ImagePending is the state of a copy its region has not reported.
const ImagePending = "pending"

// imageRequest is the body of POST /api/v1/images: the record without
// what the control plane fills in.
type imageRequest struct {
	ID           string `json:"id"`
	Region       string `json:"region,omitempty"`
	URL          string `json:"url"`
	SHA256       string `json:"sha256"`
	InitrdURL    string `json:"initrd_url,omitempty"`
	InitrdSHA256 string `json:"initrd_sha256,omitempty"`
	Format       string `json:"format"`
	OSType       string `json:"os_type"`
	OSVersion    string `json:"os_version"`
	Arch         string `json:"arch"`
}

// imageErr maps the catalogue's errors to API errors.
func imageErr(err error) error {
	var ve *osimage.ValidationError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ve):
		return &httpjson.Error{Status: http.StatusBadRequest, Code: httpjson.CodeInvalidRequest, Message: err.Error(), Field: ve.Field}
	case errors.Is(err, osimage.ErrNotFound):
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "%v", err)
	case errors.Is(err, osimage.ErrConflict):
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeConflict, "%v", err)
	}
	return err
}

// imageStates is the state of img in each region it is meant for.
func (c *regionCache) imageStates(img *osimage.Image) []ImageRegion {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ids := make([]string, 0, len(c.regions))
	for id := range c.regions {
		if img.AppliesTo(id) {
			ids = append(ids, id)
		}
	}
	if img.Region != "" && !slices.Contains(ids, img.Region) {
		ids = append(ids, img.Region)
	}
	slices.Sort(ids)
	out := make([]ImageRegion, 0, len(ids))
	for _, id := range ids {
		st := ImageRegion{Region: id, State: ImagePending}
		if r := c.regions[id]; r != nil && r.capabilities != nil {
			if s, ok := r.capabilities.Image(img.ID); ok {
				st.State, st.Reason, st.Bytes = s.State, s.Reason, s.Bytes
			}
		}
		out = append(out, st)
	}
	return out
}

func (s *Server) imageView(img *osimage.Image) Image {
	return Image{Image: *img, Regions: s.regions.imageStates(img)}
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	imgs, err := s.images.List(r.Context())
	if err != nil {
		return err
	}
	out := make([]Image, 0, len(imgs))
	for i := range imgs {
		out = append(out, s.imageView(&imgs[i]))
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string]any{"images": out})
	return nil
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) error {
	img, err := s.images.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return imageErr(err)
	}
	httpjson.WriteJSON(w, http.StatusOK, s.imageView(img))
	return nil
}

// createImage registers an image; the regions it is meant for download it.
func (s *Server) createImage(w http.ResponseWriter, r *http.Request) error {
	var body imageRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &body); err != nil {
		return err
	}
	img, err := s.images.Create(r.Context(), osimageFields(body), principal(r).Subject)
	if err != nil {
		return imageErr(err)
	}
	httpjson.WriteJSON(w, http.StatusCreated, s.imageView(img))
	return nil
}

func osimageFields(b imageRequest) osimage.Image {
	return osimage.Image{ID: b.ID, Region: b.Region, URL: b.URL, SHA256: b.SHA256, Format: b.Format,
		InitrdURL: b.InitrdURL, InitrdSHA256: b.InitrdSHA256, OSType: b.OSType, OSVersion: b.OSVersion, Arch: b.Arch}
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) error {
	if err := s.images.Delete(r.Context(), r.PathValue("id")); err != nil {
		return imageErr(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// imageNotReady explains why a region whose capabilities do not offer
// osType/osVersion cannot install it when a catalogue image for it is on
// its way or failed there; "" if none is.
func imageNotReady(caps *task.Capabilities, region, osType, osVersion string) string {
	for _, im := range caps.Images {
		if im.OSType == osType && im.OSVersion == osVersion && im.State != task.ImageReady {
			msg := "region " + region + " cannot install " + osType + " " + osVersion + " yet: its copy of image " + im.ID + " is " + im.State
			if im.Reason != "" {
				msg += " (" + im.Reason + ")"
			}
			return msg
		}
	}
	return ""
}

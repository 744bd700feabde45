package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/lpmos/lpmos/osimage"
)

// Image is a catalogue image with the state of each region's copy.
type Image struct {
	osimage.Image
	Regions []ImageRegion `json:"regions"`
}

// ImageRegion is one region's copy of a catalogue image: State is
// "pending" (not reported yet), "downloading", "ready" or "failed" (with
// Reason, e.g. "checksum mismatch").
type ImageRegion struct {
	Region string `json:"region_id"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

// Ready reports whether the image is ready in region.
func (i *Image) Ready(region string) bool {
	for _, r := range i.Regions {
		if r.Region == region {
			return r.State == "ready"
		}
	}
	return false
}

func imagePath(id string) string { return "/api/v1/images/" + url.PathEscape(id) }

// Images lists the image catalogue, by ID.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var out struct {
		Images []Image `json:"images"`
	}
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/images", nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Images, nil
}

// Image returns one catalogue image and its state in each region;
// ErrNotFound if there is none by that ID.
func (c *Client) Image(ctx context.Context, id string) (*Image, error) {
	var out Image
	if _, err := c.call(ctx, http.MethodGet, imagePath(id), nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RegisterImage adds an image to the catalogue (admins only); the regions
// it is meant for download and verify it. A bad record is an *Error with
// the field named; an ID taken, ErrConflict. CreatedAt and CreatedBy are
// the server's.
func (c *Client) RegisterImage(ctx context.Context, img osimage.Image) (*Image, error) {
	var out Image
	img.CreatedAt, img.CreatedBy = time.Time{}, ""
	if _, err := c.call(ctx, http.MethodPost, "/api/v1/images", nil, nil, img, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteImage removes an image from the catalogue; the regions remove
// their copies. ErrNotFound if there is none.
func (c *Client) DeleteImage(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, imagePath(id), nil, nil, nil, nil)
	return err
}

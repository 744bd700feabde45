package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/osimage"
)

func imagesList(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		imgs, err := c.Images(ctx)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			if imgs == nil {
				imgs = []client.Image{}
			}
			return a.json(struct {
				Images []client.Image `json:"images"`
			}{imgs})
		}
		rows := make([][]string, len(imgs))
		for i, m := range imgs {
			rows[i] = []string{m.ID, m.OSType + " " + m.OSVersion, m.Arch, imageScope(m.Image), imageStates(m.Regions)}
		}
		return a.table([]string{"IMAGE", "OS", "ARCH", "FOR", "STATE"}, rows)
	}
}

func imageScope(m osimage.Image) string {
	if m.Region == "" {
		return "every region"
	}
	return "region " + m.Region
}

// imageStates says each region's state in a few words: "dc1 ready,
// dc2 failed (checksum mismatch)".
func imageStates(rs []client.ImageRegion) string {
	if len(rs) == 0 {
		return "-"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.Region + " " + r.State
		if r.Reason != "" {
			parts[i] += " (" + printable(r.Reason) + ")"
		}
	}
	return strings.Join(parts, ", ")
}

func imagesGet(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one image ID")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		m, err := c.Image(ctx, args[0])
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(m)
		}
		rows := [][]string{
			{"Image:", m.ID}, {"OS:", m.OSType + " " + m.OSVersion + " " + m.Arch}, {"For:", imageScope(m.Image)},
			{"URL:", printable(m.URL)}, {"SHA-256:", m.SHA256}, {"Format:", m.Format},
			{"Registered:", fmt.Sprintf("%s by %s", m.CreatedAt.Format(time.RFC3339), orDash(m.CreatedBy))},
		}
		if m.InitrdURL != "" {
			rows = append(rows, []string{"Initrd:", printable(m.InitrdURL)}, []string{"Initrd SHA-256:", m.InitrdSHA256})
		}
		for _, r := range m.Regions {
			state := r.State
			if r.Bytes > 0 {
				state += ", " + strconv.FormatInt(r.Bytes, 10) + " bytes"
			}
			if r.Reason != "" {
				state += ": " + printable(r.Reason)
			}
			rows = append(rows, []string{"In " + r.Region + ":", state})
		}
		return a.table(nil, rows)
	}
}

func imagesRegister(fs *flag.FlagSet) runner {
	var m osimage.Image
	fs.StringVar(&m.URL, "image-url", "", "where the regions download the image, http or https (required; --url is the control plane's)")
	fs.StringVar(&m.SHA256, "sha256", "", "the SHA-256 of the bytes at --image-url, 64 hex digits (required)")
	fs.StringVar(&m.Format, "format", "", "raw, raw.gz, raw.xz, raw.zst or installer (default: installer with --initrd-url, else from the URL's name, else raw)")
	fs.StringVar(&m.InitrdURL, "initrd-url", "", "an installer's initrd (--image-url is then its kernel)")
	fs.StringVar(&m.InitrdSHA256, "initrd-sha256", "", "the SHA-256 of the bytes at --initrd-url")
	fs.StringVar(&m.OSType, "os", "", "the OS type tasks name to install it, e.g. ubuntu (required)")
	fs.StringVar(&m.OSVersion, "os-version", "", "the OS version tasks name, e.g. 24.04 (required)")
	fs.StringVar(&m.Arch, "arch", "amd64", "amd64 or arm64")
	fs.StringVar(&m.Region, "region", "", "the one region that offers it (default: every region)")
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the image's ID, e.g. ubuntu-24.04-amd64")
		}
		m.ID = args[0]
		if m.Format == "" && m.InitrdURL != "" {
			m.Format = osimage.FormatInstaller
		}
		if m.Format == "" {
			m.Format = "raw"
			for _, f := range osimage.Formats {
				if strings.HasSuffix(m.URL, "."+f) {
					m.Format = f
				}
			}
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		got, err := c.RegisterImage(ctx, m)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(got)
		}
		return a.table([]string{"IMAGE", "OS", "ARCH", "FOR", "STATE"},
			[][]string{{got.ID, got.OSType + " " + got.OSVersion, got.Arch, imageScope(got.Image), imageStates(got.Regions)}})
	}
}

func imagesDelete(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one image ID")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		if err := c.DeleteImage(ctx, args[0]); err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(map[string]string{"deleted": args[0]})
		}
		_, err = fmt.Fprintf(a.stdout, "deleted image %s\n", args[0])
		return err
	}
}

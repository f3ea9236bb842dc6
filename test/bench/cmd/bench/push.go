package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// push builds one gzip layer per src with GNU tar (which keeps hard links,
// owners and modes exactly as debootstrap left them) and pushes the image.
func (b *builder) push(ctx context.Context, ref string, srcs []layerSrc) error {
	tmpDir := filepath.Join(b.Dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return err
	}
	img := empty.Image
	for i, src := range srcs {
		tarPath := filepath.Join(tmpDir, fmt.Sprintf("layer-%d.tar", i))
		defer os.Remove(tarPath)
		if err := writeLayerTar(ctx, tarPath, src); err != nil {
			return err
		}
		l, err := tarball.LayerFromFile(tarPath)
		if err != nil {
			return fmt.Errorf("layer %s: %w", src.Dir, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{
			CreatedBy: "bench layer " + src.Prefix, Created: v1.Time{Time: time.Unix(0, 0)}}})
		if err != nil {
			return err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	b.log.Info("pushing", "ref", ref)
	return remote.Write(r, img, remote.WithContext(ctx))
}

func writeLayerTar(ctx context.Context, dst string, src layerSrc) error {
	entries, err := os.ReadDir(src.Dir)
	if err != nil {
		return err
	}
	args := []string{"-C", src.Dir, "-cf", dst, "--numeric-owner", "--sort=name", "--format=pax",
		"--anchored", "--exclude=dev/*", "--exclude=proc/*", "--exclude=sys/*"}
	if src.Prefix != "" {
		// S: symlink targets stay as they are; member and hard-link names move.
		args = append(args, "--transform=s,^,"+src.Prefix+"/,S")
	}
	for _, e := range entries {
		args = append(args, e.Name())
	}
	return run(ctx, "tar", args...)
}

// run runs a command, returning its output in the error when it fails.
func run(ctx context.Context, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, prog, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		return fmt.Errorf("%s %v: %w\n%s", prog, args, err, out)
	}
	return nil
}

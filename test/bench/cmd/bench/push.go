package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stratafs/strata/test/fixture"
)

// push builds one gzip layer per src with GNU tar (which keeps hard links,
// owners and modes exactly as debootstrap left them) and pushes the image.
func (b *builder) push(ctx context.Context, ref string, srcs []layerSrc) error {
	tmpDir := filepath.Join(b.Dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return err
	}
	var tars []fixture.TarFile
	for i, src := range srcs {
		tarPath := filepath.Join(tmpDir, fmt.Sprintf("layer-%d.tar", i))
		defer os.Remove(tarPath)
		if err := writeLayerTar(ctx, tarPath, src); err != nil {
			return err
		}
		tars = append(tars, fixture.TarFile{Path: tarPath, CreatedBy: "bench layer " + src.Prefix})
	}
	img, err := fixture.FromTars(tars)
	if err != nil {
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

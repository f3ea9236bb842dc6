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
	mode := "-cf"
	if src.Prefix != "" {
		if err := writePrefixDirs(ctx, dst, src); err != nil {
			return err
		}
		mode = "-rf"
	}
	args := []string{"-C", src.Dir, mode, dst, "--numeric-owner", "--sort=name", "--format=pax",
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

// writePrefixDirs starts the layer tar dst with entries for the
// directories of src.Prefix (usr/, usr/local/, usr/local/go/), the last
// one with src.Dir's mode and time, as a layer made by `docker build` or
// buildah has them: eStargz stores a prioritized file first only with its
// parent directories, so without them no file of the layer is prefetched.
func writePrefixDirs(ctx context.Context, dst string, src layerSrc) error {
	fi, err := os.Stat(src.Dir)
	if err != nil {
		return err
	}
	stage := dst + ".dirs"
	defer os.RemoveAll(stage)
	var names []string
	for p := src.Prefix; p != "." && p != "/"; p = filepath.Dir(p) {
		names = append([]string{p}, names...)
	}
	for _, n := range names {
		d := filepath.Join(stage, n)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, n := range names {
		d, m := filepath.Join(stage, n), os.FileMode(0o755)
		if n == src.Prefix {
			m = fi.Mode().Perm()
		}
		if err := os.Chmod(d, m); err != nil {
			return err
		}
		if err := os.Chtimes(d, fi.ModTime(), fi.ModTime()); err != nil {
			return err
		}
	}
	args := append([]string{"-C", stage, "-cf", dst, "--numeric-owner", "--owner=0", "--group=0", "--format=pax", "--no-recursion"}, names...)
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

// copyImage copies the image src to dst on the same registry: the
// manifest is put again, its blobs mounted from src's repository.
func copyImage(ctx context.Context, src, dst string) error {
	sref, err := name.ParseReference(src, name.Insecure)
	if err != nil {
		return err
	}
	dref, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(sref, remote.WithContext(ctx))
	if err != nil {
		return err
	}
	return remote.Write(dref, img, remote.WithContext(ctx))
}

package treecmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// What `umoci raw unpack` (umoci 0.4.7, Debian bookworm, run as root)
// does with fixture.Standard, measured by TestReferenceUnpackStandard
// against Expected:
//
//   - Faithful: type, mode including setuid/setgid/sticky and mode 0000,
//     uid/gid above 65535, nanosecond mtimes of files, symlinks (lutimes)
//     and directories — including the root "." and directories whose
//     children a later layer changed (umoci restores a parent's metadata
//     after each entry) — symlink targets, device numbers (major 4095,
//     minor 1048575), fifos, hardlink groups, content, binary xattrs in
//     user.* and security.capability, whiteouts of files and directories,
//     opaque directories (entries of the opaque layer itself survive), file
//     replaced by a directory and the reverse.
//   - NOT faithful: an xattr whose value is empty is dropped. Cause: umoci
//     reads tar.Header.Xattrs, and Go's archive/tar leaves empty PAX values
//     out of Header.Xattrs (only Header.PAXRecords has them). Compare such
//     trees with DropEmptyXattrs applied to the expectation, and do not
//     read xattrs from Header.Xattrs in Strata either.
//   - Not compared, so unknown: atime and ctime (Walk does not record
//     them); directory sizes (recorded as 0); trusted.* xattrs other than
//     trusted.overlay.* (Standard has none).

var installMu sync.Mutex

// EnsureInstalled installs the Debian packages skopeo and umoci when their
// binaries are absent, and does nothing otherwise.
func EnsureInstalled(ctx context.Context) error {
	installMu.Lock()
	defer installMu.Unlock()
	var missing []string
	for _, bin := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	install := append([]string{"-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends"}, missing...)
	if err := apt(ctx, install...); err == nil {
		return nil
	}
	// A fresh container often has no package lists yet.
	if err := apt(ctx, "-o", "DPkg::Lock::Timeout=120", "update"); err != nil {
		return err
	}
	return apt(ctx, install...)
}

func apt(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("treecmp: apt-get %s: %w\n%s", strings.Join(args, " "), err, lastBytes(out))
	}
	return nil
}

// DropEmptyXattrs returns recs without xattrs whose value is empty: the
// view of a tree after ReferenceUnpack (see above).
func DropEmptyXattrs(recs []Record) []Record {
	out := make([]Record, len(recs))
	for i, r := range recs {
		var xs []Xattr
		for _, x := range r.Xattrs {
			if x.Value != "" {
				xs = append(xs, x)
			}
		}
		r.Xattrs = xs
		out[i] = r
	}
	return out
}

// ErrUnpack is wrapped by every ReferenceUnpack failure.
var ErrUnpack = errors.New("treecmp: reference unpack failed")

// ReferenceUnpack unpacks the image ref ("host:port/repo:tag", plain HTTP)
// into dir, which must not exist yet: skopeo copies the image into an OCI
// layout under t.TempDir, and `umoci raw unpack` applies its layers as
// root, with whiteouts, into dir. Neither tool shares code with Strata.
func ReferenceUnpack(ctx context.Context, t testing.TB, ref, dir string) error {
	t.Helper()
	return referenceUnpack(ctx, t, ref, dir)
}

// ReferenceUnpackGzip is ReferenceUnpack for images umoci 0.4.7 cannot
// read (zstd and zstd:chunked layers): skopeo recompresses every layer to
// gzip on its way into the layout (--dest-compress-format gzip), which
// changes blobs but not the tar streams inside them.
func ReferenceUnpackGzip(ctx context.Context, t testing.TB, ref, dir string) error {
	t.Helper()
	return referenceUnpack(ctx, t, ref, dir, "--dest-compress", "--dest-compress-format", "gzip")
}

func referenceUnpack(ctx context.Context, t testing.TB, ref, dir string, copyFlags ...string) error {
	if err := EnsureInstalled(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrUnpack, err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	// --insecure-policy: the test does not care about signature policy,
	// and a missing /etc/containers/policy.json must not fail it.
	args := append([]string{"--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"}, copyFlags...)
	if err := run(ctx, "skopeo", append(args, "docker://"+ref, "oci:"+layout+":ref")...); err != nil {
		return err
	}
	return UnpackLayout(ctx, layout, "ref", dir)
}

// UnpackLayout has `umoci raw unpack` apply the layers of the image tagged
// tag in the OCI image layout at layout, as root, into dir, which must not
// exist yet.
func UnpackLayout(ctx context.Context, layout, tag, dir string) error {
	if err := EnsureInstalled(ctx); err != nil {
		return fmt.Errorf("%w: %w", ErrUnpack, err)
	}
	return run(ctx, "umoci", "raw", "unpack", "--image", layout+":"+tag, dir)
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w\n%s", ErrUnpack, name, strings.Join(args, " "), err, lastBytes(out))
	}
	return nil
}

func lastBytes(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

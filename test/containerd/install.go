package containerd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
)

// Binaries the package needs, with the Debian package that ships each.
var binaries = []struct{ path, pkg string }{
	{"/usr/bin/containerd", "containerd"},
	{"/usr/bin/ctr", "containerd"},
	{"/usr/bin/containerd-shim-runc-v2", "containerd"},
	{"/usr/sbin/runc", "runc"},
}

var installMu sync.Mutex

// EnsureInstalled installs Debian's containerd and runc when one of their
// binaries is missing, and touches nothing otherwise.
func EnsureInstalled(ctx context.Context) error {
	installMu.Lock()
	defer installMu.Unlock()
	var missing []string
	for _, b := range binaries {
		if _, err := os.Stat(b.path); err != nil {
			missing = append(missing, b.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return aptInstall(ctx, missing...)
}

func aptInstall(ctx context.Context, pkgs ...string) error {
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %v: %w\n%s", args, err, lastBytes(out, 2000))
		}
		return nil
	}
	install := append([]string{"-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends"}, pkgs...)
	if err := run(install...); err == nil {
		return nil
	}
	// A fresh machine often has no package lists yet.
	if err := run("-o", "DPkg::Lock::Timeout=120", "update"); err != nil {
		return err
	}
	return run(install...)
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Busybox is the static busybox of Debian's busybox-static package, which
// test images use as their shell and tools.
const Busybox = "/bin/busybox"

// EnsureBusybox installs busybox-static when Busybox is missing.
func EnsureBusybox(ctx context.Context) error {
	installMu.Lock()
	defer installMu.Unlock()
	if _, err := os.Stat(Busybox); err == nil {
		return nil
	}
	return aptInstall(ctx, "busybox-static")
}

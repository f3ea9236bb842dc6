package run

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// etcFiles are the bundle's generated files, bound over the image's.
type etcFiles struct{ resolvConf, hosts, hostname string }

// writeEtcFiles writes resolv.conf (the host's with the host network; none
// without: only lo is up), hosts (localhost and the hostname) and hostname
// into the bundle.
func writeEtcFiles(bundle, hostname string, hostNet bool) (etcFiles, error) {
	f := etcFiles{
		resolvConf: filepath.Join(bundle, "resolv.conf"),
		hosts:      filepath.Join(bundle, "hosts"),
		hostname:   filepath.Join(bundle, "hostname"),
	}
	resolv := []byte("# strata run --network none: no name servers\n")
	if hostNet {
		b, err := os.ReadFile("/etc/resolv.conf")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return f, fmt.Errorf("run: host resolv.conf: %w", err)
		}
		resolv = b
	}
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + hostname + "\n"
	for name, content := range map[string][]byte{f.resolvConf: resolv, f.hosts: []byte(hosts),
		f.hostname: []byte(hostname + "\n")} {
		if err := os.WriteFile(name, content, 0o644); err != nil {
			return f, fmt.Errorf("run: bundle: %w", err)
		}
	}
	return f, nil
}

// defaultMounts is runc's example spec, plus the bundle's /etc files.
func defaultMounts(f etcFiles) []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
			Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: f.resolvConf, Options: []string{"rbind", "rprivate"}},
		{Destination: "/etc/hosts", Type: "bind", Source: f.hosts, Options: []string{"rbind", "rprivate"}},
		{Destination: "/etc/hostname", Type: "bind", Source: f.hostname, Options: []string{"rbind", "rprivate"}},
	}
}

func userMounts(ms []Mount) []specs.Mount {
	out := make([]specs.Mount, 0, len(ms))
	for _, m := range ms {
		out = append(out, specs.Mount{Destination: m.Destination, Type: m.Type, Source: m.Source,
			Options: append([]string{}, m.Options...)})
	}
	// Parents first, whatever order they were given in, as BuildKit and
	// Docker sort them: a mount under another (a secret in a cache
	// directory) is made on it, not hidden by it. Mounts of one place
	// keep their order: the last wins.
	slices.SortStableFunc(out, func(a, b specs.Mount) int {
		return strings.Compare(path.Clean(a.Destination), path.Clean(b.Destination))
	})
	return out
}

// mountTargets drops a default mount that a later mount replaces (same
// destination), checks the user's mounts, and makes every destination that
// is on the rootfs exist, with destinations resolved inside the root. A
// destination under an earlier mount (/dev/pts under /dev) is on that
// mount, not on the rootfs, and is left to the runtime.
func mountTargets(t *targets, ms []specs.Mount) ([]specs.Mount, error) {
	if err := checkRuntimeDirs(t.root); err != nil {
		return nil, err
	}
	var out []specs.Mount
	for i, m := range ms {
		if replaced(ms[i+1:], m.Destination) {
			continue
		}
		if err := checkMount(m); err != nil {
			return nil, err
		}
		if !underMount(out, m.Destination) {
			file, err := needsFile(m)
			if err != nil {
				return nil, err
			}
			if m.Destination, err = t.ensure(m.Destination, file); err != nil {
				return nil, err
			}
			if mode, ok := tmpfsMode(m); ok {
				// runc gives a tmpfs the mode of the directory it
				// mounts on, whatever mode= says: one made for the
				// run has the mount's.
				if err := t.setMode(m.Destination, mode); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// checkRuntimeDirs refuses a rootfs whose /dev, /proc or /sys is there
// and no directory. The runtime mounts on them and then works in them by
// path before it enters the container: runc makes /dev's links
// (/dev/fd, /dev/stdin, ...) and crun its device nodes at ROOTFS/dev/...,
// which through a symlink to /somewhere are made on the host. runc
// refuses a /proc symlink for the same reason; buildah 1.28 and runc
// itself run with a /dev symlink and write through it.
func checkRuntimeDirs(r *root) error {
	for _, p := range []string{"/dev", "/proc", "/sys"} {
		st, err := r.lstat(p)
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			return fmt.Errorf("run: %s: %w", p, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			target, _ := r.readlink(p)
			return fmt.Errorf("run: %w: its %s is a symlink (to %q); a runtime would make device nodes and links through it outside the container", ErrUnsafeRootfs, p, target)
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Errorf("run: %w: its %s is not a directory", ErrUnsafeRootfs, p)
		}
	}
	return nil
}

func replaced(later []specs.Mount, dest string) bool {
	for _, m := range later {
		if path.Clean(m.Destination) == path.Clean(dest) {
			return true
		}
	}
	return false
}

func underMount(earlier []specs.Mount, dest string) bool {
	return slices.ContainsFunc(earlier, func(m specs.Mount) bool { return within(dest, m.Destination) })
}

// within says whether the clean absolute path p is the mount destination
// dest or under it.
func within(p, dest string) bool {
	d := path.Clean("/" + dest)
	return p == d || strings.HasPrefix(p, d+"/")
}

func checkMount(m specs.Mount) error {
	if !path.IsAbs(m.Destination) || path.Clean(m.Destination) == "/" {
		return fmt.Errorf("run: %w: mount target %q must be an absolute path other than /", ErrInvalidOptions, m.Destination)
	}
	switch m.Type {
	case MountBind, MountTmpfs, "proc", "devpts", "mqueue", "sysfs", "cgroup":
		return nil
	}
	return fmt.Errorf("run: %w: mount type %q (want bind or tmpfs)", ErrInvalidOptions, m.Type)
}

// needsFile: a bind of a file needs a file to mount on; everything else a
// directory.
func needsFile(m specs.Mount) (bool, error) {
	if m.Type != MountBind {
		return false, nil
	}
	st, err := os.Stat(m.Source)
	if err != nil {
		return false, fmt.Errorf("run: %w: bind source: %w", ErrInvalidOptions, err)
	}
	return !st.IsDir(), nil
}

// allCaps are the capabilities of Linux 5.9+, by number.
var allCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"}

// defaultCaps is Docker's default set.
var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}

// capabilities is defaultCaps plus add ("NET_ADMIN", "cap_net_admin",
// "ALL"). ALL means every capability this kernel has that this process
// may give (its bounding set: a container host may have dropped some, and
// the runtime fails to set one outside it), as podman reads it.
func capabilities(add []string) ([]string, error) {
	caps := append([]string{}, defaultCaps...)
	have := map[string]bool{}
	for _, c := range caps {
		have[c] = true
	}
	for _, a := range add {
		name := strings.ToUpper(strings.TrimSpace(a))
		var names []string
		switch {
		case name == "ALL":
			bounding := boundingSet()
			for i, c := range allCaps[:lastCap()+1] {
				if bounding&(1<<i) != 0 {
					names = append(names, c)
				}
			}
		case isCap("CAP_" + name):
			names = []string{"CAP_" + name}
		case isCap(name):
			names = []string{name}
		default:
			return nil, fmt.Errorf("run: %w: unknown capability %q", ErrInvalidOptions, a)
		}
		for _, n := range names {
			if !have[n] {
				have[n] = true
				caps = append(caps, n)
			}
		}
	}
	return caps, nil
}

func isCap(name string) bool {
	for _, c := range allCaps {
		if c == name {
			return true
		}
	}
	return false
}

// lastCap is the kernel's highest capability number, so ALL does not name
// capabilities an older kernel (or runtime) rejects.
func lastCap() int {
	last := len(allCaps) - 1
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= 0 && n < last {
			last = n
		}
	}
	return last
}

// boundingSet is this process's capability bounding set (CapBnd in
// /proc/self/status), every capability when it cannot be read.
func boundingSet() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ^uint64(0)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
				return n
			}
		}
	}
	return ^uint64(0)
}

// tmpfsMode is the mode= of a tmpfs mount.
func tmpfsMode(m specs.Mount) (uint32, bool) {
	if m.Type != MountTmpfs {
		return 0, false
	}
	for _, o := range m.Options {
		if v, ok := strings.CutPrefix(o, "mode="); ok {
			if n, err := strconv.ParseUint(v, 8, 32); err == nil && n <= 0o7777 {
				return uint32(n), true
			}
		}
	}
	return 0, false
}

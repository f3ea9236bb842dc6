package run

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// prepare checks o against the rootfs (command, user), writes the files
// the bundle mounts, makes the mount targets the rootfs lacks (recorded in
// t) and returns the spec.
func prepare(o Options, id string, r *root, t *targets, bundle string) (*specs.Spec, error) {
	args := o.Args
	if len(args) == 0 {
		args = append(append([]string{}, o.Config.Entrypoint...), o.Config.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("run: %w", ErrNoCommand)
	}
	hostNet, err := networkMode(o.Network)
	if err != nil {
		return nil, err
	}
	rootfs, err := filepath.Abs(o.Rootfs)
	if err != nil {
		return nil, fmt.Errorf("run: rootfs: %w", err)
	}
	userSpec := o.User
	if userSpec == "" {
		userSpec = o.Config.User
	}
	u, err := resolveUser(r, userSpec)
	if err != nil {
		return nil, err
	}
	hostname := o.Hostname
	if hostname == "" {
		hostname = strings.TrimPrefix(id, "strata-run-")[:12]
	}
	env, err := environment(o, u, hostname)
	if err != nil {
		return nil, err
	}
	cwd := workDir(o)
	if err := lookPath(r, args[0], lookupEnv(env, "PATH"), cwd); err != nil && !mountMayHold(o.Mounts, args[0], lookupEnv(env, "PATH"), cwd) {
		return nil, err
	}
	caps, err := capabilities(o.CapAdd)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return nil, fmt.Errorf("run: bundle: %w", err)
	}
	files, err := writeEtcFiles(bundle, hostname, hostNet)
	if err != nil {
		return nil, err
	}
	mounts, err := mountTargets(t, append(defaultMounts(files), userMounts(o.Mounts)...))
	if err != nil {
		return nil, err
	}
	// A working directory the image lacks is made, as BuildKit, buildah
	// and docker make it, and stays in the layer like anything the
	// command makes; inside a mount, the runtime makes it in what is
	// mounted there (a bind's source keeps it, as docker's does).
	if cwd, err = t.ensureWorkDir(cwd, !inMount(o.Mounts, cwd)); err != nil {
		return nil, err
	}
	spec := &specs.Spec{
		Version:  specVersion,
		Root:     &specs.Root{Path: rootfs},
		Hostname: hostname,
		Mounts:   mounts,
		Process: &specs.Process{
			Terminal:     o.TTY,
			User:         specs.User{UID: u.uid, GID: u.gid, AdditionalGids: u.groups},
			Args:         args,
			Env:          env,
			Cwd:          cwd,
			Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			Rlimits:      []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile(), Soft: nofile()}},
		},
		Linux: &specs.Linux{
			Namespaces:    namespaces(hostNet),
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Resources: &specs.LinuxResources{
				// deny-all; runtimes add the standard devices (null, zero, tty, pts, ...)
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
	return spec, nil
}

// inMount says whether p is one of o's mounts' destinations or lies
// under one.
func inMount(mounts []Mount, p string) bool {
	return slices.ContainsFunc(mounts, func(m Mount) bool { return within(p, m.Destination) })
}

// mountMayHold says whether the command name may be found through a mount
// (its path, or a PATH directory, is or is under a mount's destination),
// which is there only once the container starts: a build's heredoc
// script, tools bind-mounted from another image.
func mountMayHold(mounts []Mount, name, pathEnv, workDir string) bool {
	if strings.Contains(name, "/") {
		if !path.IsAbs(name) {
			name = path.Join(workDir, name)
		}
		return inMount(mounts, path.Clean(name))
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if path.IsAbs(dir) && inMount(mounts, path.Join(dir, name)) {
			return true
		}
	}
	return false
}

// specVersion is the runtime-spec version the config claims: every field
// used here is in 1.0.x, and crun 1.8 refuses a newer version than it knows.
const specVersion = "1.0.2"

func networkMode(n string) (host bool, err error) {
	switch n {
	case "", "host":
		return true, nil
	case "none":
		return false, nil
	}
	return false, fmt.Errorf("run: %w: network %q (want host or none)", ErrInvalidOptions, n)
}

func workDir(o Options) string {
	wd := o.WorkDir
	if wd == "" {
		wd = o.Config.WorkingDir
	}
	return path.Clean("/" + wd)
}

// environment is the image's Env with o.Env over it, then the defaults
// nothing set: PATH, HOSTNAME, HOME (the user's home, or /), TERM with a
// terminal.
//
// An image's entry without "=" is the variable set empty, as BuildKit reads
// it (runtimes refuse such an entry, which would fail every run on that
// image); one without a name is left out.
func environment(o Options, u execUser, hostname string) ([]string, error) {
	var env []string
	for _, kv := range o.Config.Env {
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case k == "":
		case !ok:
			env = setEnv(env, kv+"=")
		default:
			env = append(env, kv)
		}
	}
	for _, kv := range o.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("run: %w: environment entry %q is not KEY=VALUE", ErrInvalidOptions, kv)
		}
		env = setEnv(env, kv)
	}
	home := u.home
	if home == "" {
		home = "/"
	}
	defaults := []string{"PATH=" + DefaultPath, "HOSTNAME=" + hostname, "HOME=" + home}
	if o.TTY {
		defaults = append(defaults, "TERM=xterm")
	}
	for _, kv := range defaults {
		k, _, _ := strings.Cut(kv, "=")
		if !hasEnv(env, k) {
			env = append(env, kv)
		}
	}
	return env, nil
}

// setEnv replaces every entry of kv's key, or appends kv.
func setEnv(env []string, kv string) []string {
	k, _, _ := strings.Cut(kv, "=")
	out := env[:0]
	for _, e := range env {
		if ek, _, _ := strings.Cut(e, "="); ek != k {
			out = append(out, e)
		}
	}
	return append(out, kv)
}

func hasEnv(env []string, k string) bool {
	for _, e := range env {
		if ek, _, _ := strings.Cut(e, "="); ek == k {
			return true
		}
	}
	return false
}

// lookupEnv is the last value of k, as a shell would see it.
func lookupEnv(env []string, k string) string {
	v := ""
	for _, e := range env {
		if ek, ev, _ := strings.Cut(e, "="); ek == k {
			v = ev
		}
	}
	return v
}

func namespaces(hostNet bool) []specs.LinuxNamespace {
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
	if !hostNet {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	return ns
}

// Docker's defaults: what a container must not read or change in /proc and
// /sys.
var (
	maskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap"}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// nofile is the RLIMIT_NOFILE of the command: 1048576 (what dockerd
// gives containers), or this process's hard limit when that is lower — the
// command has no CAP_SYS_RESOURCE to raise it, so the runtime could not set
// more.
func nofile() uint64 {
	limit := uint64(1 << 20)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Max < limit {
		limit = rl.Max
	}
	return limit
}

func writeSpec(bundle string, spec *specs.Spec) error {
	b, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return fmt.Errorf("run: spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("run: spec: %w", err)
	}
	return nil
}

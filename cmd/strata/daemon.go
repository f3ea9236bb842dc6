package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/stratafs/strata/internal/daemon"
)

func init() {
	register(&command{
		name:    "daemon",
		summary: "run the daemon that serves mounts (started on demand by other commands)",
		usage:   "[--config FILE] [--root DIR] [--socket PATH] [--supervise=false] | --upgrade",
		help: `Runs the strata daemon in the foreground. It owns every FUSE mount strata
makes, serves the control API on a unix socket, and Prometheus metrics at
/metrics on that socket (and on metrics_address when configured).

A crash or an upgrade does not disturb what runs on the mounts. The daemon
runs as the child of a small supervisor (this command) that holds every
layer's FUSE connection: when the daemon dies, the supervisor starts it
again at once and the new daemon takes the connections over. Processes
reading a mount, containers on a containerd snapshot and build steps wait
for it (well under 2 s) and go on; no read fails. Under systemd, a unit with
FileDescriptorStoreMax= and Restart=always does the same without the
supervisor (see docs/architecture.md, "Restarts").

  strata daemon --upgrade    hands the connections to the binary now
                             installed at the same path: the daemon stops
                             without unmounting anything, and its
                             supervisor (or systemd) starts the new one

On start it takes over the connections it is handed, mounts again every
other image it had mounted (from its local index and cache) and clears
mounts a daemon with no supervisor left. On SIGTERM or SIGINT it unmounts
everything and exits; the mounts come back at the next start unless they
were removed with 'strata umount'.

Examples:
  strata daemon                               # supervised, in the foreground
  strata daemon --upgrade                     # after installing a new strata
  strata daemon --supervise=false             # no restart, no takeover

The optional TOML config file (default ` + daemon.DefaultConfigPath + `) may set:
  root = "/var/lib/strata"           state: metadata DB, blobs, chunk cache
  socket = "/run/strata/strata.sock"  control API socket
  insecure_registries = ["host:5000"] registries reached over plain HTTP, or HTTPS unverified
  fetch_timeout = "30s"              bound on one registry read, retries included
  cache_size = 10737418240           chunk cache bound in bytes
  max_concurrent_requests = 16       parallel requests per layer
  containerd_socket = ""             containerd snapshots API; default next to socket, "off" to disable
  containerd_stargz_socket = ""      the same for the name "stargz" (BuildKit, nerdctl), snapshots
                                     of its own; default containerd_socket's name with -stargz
                                     before .sock
  metrics_address = ""               e.g. "127.0.0.1:9110"
  prefetch_lists = "auto"            recorded prefetch lists: auto (store, then registry), local, off
  layer_indexes = "auto"             look for pushed gzip/tar layer indexes (strata index): auto, off
  index_containerd_layers = false    containerd's gzip (and zstd) layers without an index: index (fetch) them here
                                     (read once) instead of leaving them to containerd's unpack
  prefetch = "auto"                  fetch the rest of a layer in the background: auto (once it is
                                     read broadly, while it is read), all (every layer, whole), off
  prefetch_budget = 0                auto: most bytes one layer's background fetch takes (0: all)
  memory_limit = 0                   soft memory limit in bytes, as GOMEMLIMIT (0: GOMEMLIMIT or none)
Flags override the file.`,
		run: runDaemon,
	})
}

func runDaemon(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["daemon"]
	fs := c.flags(stdout)
	configPath := fs.String("config", daemon.DefaultConfigPath, "TOML configuration file")
	root := fs.String("root", "", "state directory (default $STRATA_ROOT, else the config file's, else /var/lib/strata)")
	socket := fs.String("socket", "", "control socket (default $STRATA_SOCKET, else the config file's, else /run/strata/strata.sock)")
	ctrdSocket := fs.String("containerd-socket", "", `containerd snapshots API socket (default next to --socket; "off" disables it)`)
	insecure := fs.StringSlice("insecure-registry", nil, "registry host:port to reach over plain HTTP, or HTTPS without verifying its certificate (repeatable)")
	supervise := fs.Bool("supervise", true, "run under a supervisor that restarts the daemon and keeps its mounts alive")
	upgrade := fs.Bool("upgrade", false, "hand the running daemon's mounts to the strata binary now installed, without a failed read")
	if err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	if *upgrade {
		return upgradeDaemon(ctx, *configPath, fs.Changed("config"), *socket, stdout)
	}
	// A supervisor (or systemd with a descriptor store) runs this as the
	// daemon itself; otherwise this process becomes the supervisor.
	cfg, err := daemon.LoadConfig(*configPath, fs.Changed("config"))
	if err != nil {
		return err
	}
	// Flags, then the environment the other commands read, then the file.
	cfg.Root = firstOf(*root, os.Getenv("STRATA_ROOT"), cfg.Root)
	cfg.Socket = firstOf(*socket, os.Getenv("STRATA_SOCKET"), cfg.Socket)
	if *supervise && (os.Getenv("NOTIFY_SOCKET") == "" || os.Getenv("FDSTORE") == "") {
		self, err := selfPath()
		if err != nil {
			return err
		}
		return daemon.Supervise(ctx, self, append([]string{"daemon"}, args...), cfg.Socket)
	}
	if *ctrdSocket != "" {
		cfg.ContainerdSocket = *ctrdSocket
	}
	cfg.InsecureRegistries = append(cfg.InsecureRegistries, *insecure...)
	// Scratch files of the libraries the daemon uses (the eStargz
	// writer's, as big as the layer it writes) go to the store's tmp,
	// which the store empties when it opens: a daemon killed in a commit
	// leaves none behind for good, as it would in /tmp.
	if cfg.Root != "" {
		tmp := filepath.Join(cfg.Root, "tmp")
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return err
		}
		os.Setenv("TMPDIR", tmp)
	}
	err = daemon.Run(ctx, cfg, nil)
	if errors.Is(err, daemon.ErrHandover) {
		return exitStatus(daemon.ExitHandover)
	}
	return err
}

// upgradeDaemon asks the daemon on socket to hand its mounts over and
// waits for the next one to answer.
func upgradeDaemon(ctx context.Context, configPath string, explicit bool, socket string, stdout io.Writer) error {
	if socket == "" {
		cfg, err := daemon.LoadConfig(configPath, explicit)
		if err != nil {
			return err
		}
		socket = firstOf(os.Getenv("STRATA_SOCKET"), cfg.Socket)
	}
	c := daemon.NewClient(socket)
	old, err := c.Handover(ctx)
	if err != nil {
		return fmt.Errorf("handing over: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		st, err := c.Status(ctx)
		if err == nil && st.PID != old.PID {
			fmt.Fprintf(stdout, "strata daemon handed over: pid %d → %d\n", old.PID, st.PID)
			return nil
		}
	}
	return fmt.Errorf("no daemon answered on %s within 60s after the handover; see its log", socket)
}

// firstOf is the first of vs that is not empty.
func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

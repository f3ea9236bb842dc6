package main

import (
	"context"
	"io"

	"github.com/stratafs/strata/internal/daemon"
)

func init() {
	register(&command{
		name:    "daemon",
		summary: "run the daemon that serves mounts (started on demand by other commands)",
		usage:   "[--config FILE] [--root DIR] [--socket PATH]",
		help: `Runs the strata daemon in the foreground. It owns every FUSE mount strata
makes, serves the control API on a unix socket, and Prometheus metrics at
/metrics on that socket (and on metrics_address when configured).

On start it clears mounts left by a daemon that died, and mounts again every
image it had mounted, from its local index and cache. On SIGTERM or SIGINT
it unmounts everything and exits; the mounts come back at the next start
unless they were removed with 'strata umount'.

The optional TOML config file (default ` + daemon.DefaultConfigPath + `) may set:
  root = "/var/lib/strata"           state: metadata DB, blobs, chunk cache
  socket = "/run/strata/strata.sock"  control API socket
  insecure_registries = ["host:5000"] plain HTTP registries
  fetch_timeout = "30s"              bound on one registry read, retries included
  cache_size = 10737418240           chunk cache bound in bytes
  max_concurrent_requests = 16       parallel requests per layer
  containerd_socket = ""             containerd snapshots API; default next to socket, "off" to disable
  metrics_address = ""               e.g. "127.0.0.1:9110"
  prefetch_lists = "auto"            recorded prefetch lists: auto (store, then registry), local, off
  layer_indexes = "auto"             look for pushed gzip/tar layer indexes (strata index): auto, off
  index_containerd_layers = false    containerd's gzip/tar layers without an index: index them here
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
	root := fs.String("root", "", "state directory (default from config, /var/lib/strata)")
	socket := fs.String("socket", "", "control socket (default from config, /run/strata/strata.sock)")
	ctrdSocket := fs.String("containerd-socket", "", `containerd snapshots API socket (default next to --socket; "off" disables it)`)
	insecure := fs.StringSlice("insecure-registry", nil, "registry host:port to reach over plain HTTP (repeatable)")
	if err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	cfg, err := daemon.LoadConfig(*configPath, fs.Changed("config"))
	if err != nil {
		return err
	}
	if *root != "" {
		cfg.Root = *root
	}
	if *socket != "" {
		cfg.Socket = *socket
	}
	if *ctrdSocket != "" {
		cfg.ContainerdSocket = *ctrdSocket
	}
	cfg.InsecureRegistries = append(cfg.InsecureRegistries, *insecure...)
	return daemon.Run(ctx, cfg, nil)
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/stratafs/strata/internal/pull"
)

func init() {
	register(&command{
		name:    "pull",
		summary: "pull an image into containerd for the strata snapshotter, lazily",
		usage:   "[--containerd-address ADDR] [--namespace NS] [--snapshotter NAME] [--insecure] REF",
		help: `Pulls the image REF into containerd's image store and unpacks it into the
strata snapshotter, with the labels that let Strata mount each layer lazily:
eStargz and zstd:chunked layers are never downloaded, uncompressed tar
layers are read once by Strata to index them, other layers are downloaded
and unpacked by containerd as usual. Afterwards

  ctr run --snapshotter strata REF ID COMMAND

starts at once. containerd must load strata as a proxy plugin (see
docs/containerd.md) and 'strata daemon' must be running. Only the manifest
and config go through containerd; tested with containerd 1.6.`,
		run: runPull,
	})
}

func runPull(ctx context.Context, args []string, stdout io.Writer) error {
	c := commands["pull"]
	fs := c.flags(stdout)
	var opt pull.Options
	fs.StringVarP(&opt.Address, "containerd-address", "a", envOr("CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"), "containerd's socket ($CONTAINERD_ADDRESS)")
	fs.StringVarP(&opt.Namespace, "namespace", "n", envOr("CONTAINERD_NAMESPACE", "default"), "containerd namespace ($CONTAINERD_NAMESPACE)")
	fs.StringVar(&opt.Snapshotter, "snapshotter", "strata", "name of Strata's proxy plugin in containerd's config")
	fs.BoolVar(&opt.PlainHTTP, "insecure", false, "reach the registry over plain HTTP (loopback registries always are)")
	if err := c.parse(fs, args, 1, 1); err != nil {
		return err
	}
	// A socket that is not there fails at once, not after the dial's
	// timeout behind progress lines.
	if path := strings.TrimPrefix(opt.Address, "unix://"); strings.HasPrefix(path, "/") {
		if st, err := os.Stat(path); err != nil {
			return fmt.Errorf("containerd's socket %s: %w (is containerd running? --containerd-address names another)", path, err)
		} else if st.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("containerd's socket %s is not a socket", path)
		}
	}
	opt.Progress = stdout
	_, err := pull.Pull(ctx, fs.Arg(0), opt)
	return err
}

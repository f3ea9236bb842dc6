package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/snapshot"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Labels stargz-snapshotter's fs/source reads to find a layer; containerd
// sets them through source.AppendDefaultLabelsHandlerWrapper.
const (
	labelRef    = "containerd.io/snapshot/remote/stargz.reference"
	labelDigest = "containerd.io/snapshot/remote/stargz.digest"
	labelLayers = "containerd.io/snapshot/remote/stargz.layers"
)

func main() {
	root := flag.String("root", "", "state directory (fresh per cold run)")
	noBackground := flag.Bool("no-background-fetch", false, "disable stargz's background fetch of whole layers")
	socket := flag.String("snapshotter-socket", "", "serve stargz-snapshotter's snapshotter on this unix socket instead of mounting REF")
	flag.Parse()
	if *root == "" || (*socket == "" && flag.NArg() != 2) || (*socket != "" && flag.NArg() != 0) {
		fmt.Fprintln(os.Stderr, "usage: stargz-bench --root DIR REF MOUNTPOINT\n       stargz-bench --root DIR --snapshotter-socket SOCKET")
		os.Exit(2)
	}
	_ = log.SetLevel("warn")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	if *socket != "" {
		err = serveSnapshotter(ctx, *root, *socket, *noBackground)
	} else {
		err = run(ctx, *root, flag.Arg(0), flag.Arg(1), *noBackground)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "stargz-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, root, ref, target string, noBackground bool) error {
	layers, err := fetchLayers(ctx, ref)
	if err != nil {
		return err
	}
	cfg := config.Config{NoPrometheus: true, NoBackgroundFetch: noBackground}
	fsys, err := stargzfs.NewFilesystem(filepath.Join(root, "stargz"), cfg)
	if err != nil {
		return fmt.Errorf("stargz filesystem: %w", err)
	}
	var mounted []string
	defer func() {
		// A fresh context: ctx is already cancelled when a signal ends the run.
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := fsys.Unmount(context.Background(), mounted[i]); err != nil {
				fmt.Fprintln(os.Stderr, "stargz-bench: unmount:", err)
			}
		}
	}()
	for i, l := range layers {
		mp := filepath.Join(root, "layers", strconv.Itoa(i))
		if err := mountLayer(ctx, fsys, mp, ref, l, layers); err != nil {
			return err
		}
		mounted = append(mounted, mp)
	}
	if err := mergeLayers(mounted, target); err != nil {
		return err
	}
	defer func() { _ = unix.Unmount(target, unix.MNT_DETACH) }()
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

func mountLayer(ctx context.Context, fsys snapshot.FileSystem, mp, ref string, l ocispec.Descriptor, all []ocispec.Descriptor) error {
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	digests := make([]string, len(all))
	for i, d := range all {
		digests[i] = d.Digest.String()
	}
	labels := map[string]string{}
	for k, v := range l.Annotations { // carries the TOC digest stargz verifies against
		labels[k] = v
	}
	labels[labelRef] = ref
	labels[labelDigest] = l.Digest.String()
	labels[labelLayers] = strings.Join(digests, ",")
	if err := fsys.Mount(ctx, mp, labels); err != nil {
		return fmt.Errorf("mount layer %s: %w", l.Digest, err)
	}
	return nil
}

// mergeLayers stacks the layer mounts (bottom first in mps) at target:
// overlayfs needs two lower dirs without an upper one, so a single layer
// is bind-mounted instead.
func mergeLayers(mps []string, target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if len(mps) == 1 {
		if err := unix.Mount(mps[0], target, "", unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("bind mount: %w", err)
		}
		return nil
	}
	lower := make([]string, len(mps))
	for i, mp := range mps {
		lower[len(mps)-1-i] = mp
	}
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lower, ":")); err != nil {
		return fmt.Errorf("overlay mount: %w", err)
	}
	return nil
}

// fetchLayers reads the image manifest of ref ("host:port/repo:tag") over
// plain HTTP; the bench registry is on loopback.
func fetchLayers(ctx context.Context, ref string) ([]ocispec.Descriptor, error) {
	slash := strings.Index(ref, "/")
	colon := strings.LastIndex(ref, ":")
	if slash < 0 || colon < slash {
		return nil, fmt.Errorf("reference %q is not host/repo:tag", ref)
	}
	url := "http://" + ref[:slash] + "/v2/" + ref[slash+1:colon] + "/manifests/" + ref[colon+1:]
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest+", application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var m ocispec.Manifest
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if len(m.Layers) == 0 {
		return nil, errors.New("manifest has no layers (an index? push a single-platform image)")
	}
	return m.Layers, nil
}

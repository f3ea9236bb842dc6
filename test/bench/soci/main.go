package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func main() {
	root := flag.String("root", "", "state directory (fresh per cold run)")
	flag.Parse()
	args := flag.Args()
	index := len(args) == 2 && args[0] == "index"
	if *root == "" || (!index && len(args) != 2) {
		fmt.Fprintln(os.Stderr, "usage: soci-bench --root DIR index REF\n       soci-bench --root DIR REF MOUNTPOINT")
		os.Exit(2)
	}
	_ = log.SetLevel("warn")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	if index {
		var ref string
		if ref, err = buildIndex(ctx, *root, args[1]); err == nil {
			fmt.Println(ref)
		}
	} else {
		err = run(ctx, *root, args[0], args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soci-bench:", err)
		os.Exit(1)
	}
}

// newResolver is containerd's registry client; it speaks plain HTTP to
// 127.0.0.1 and localhost (the bench's registry and proxy).
func newResolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
}

// image is what a pull learns of a reference before unpacking it.
type image struct {
	name     string
	manifest ocispec.Descriptor // the platform's image manifest
	layers   []ocispec.Descriptor
	diffIDs  []digest.Digest
	fetcher  remotes.Fetcher
}

// resolveImage resolves ref as containerd's pull does: the reference to a
// descriptor, an image index to this platform's image manifest (never a
// SOCI index, whose artifactType is set), then the manifest and its config.
func resolveImage(ctx context.Context, ref string) (*image, error) {
	r := newResolver()
	name, desc, err := r.Resolve(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	f, err := r.Fetcher(ctx, name)
	if err != nil {
		return nil, err
	}
	if images.IsIndexType(desc.MediaType) {
		var idx ocispec.Index
		if err := fetchJSON(ctx, f, desc, &idx); err != nil {
			return nil, err
		}
		m := platforms.Default()
		found := false
		for _, d := range idx.Manifests {
			if images.IsManifestType(d.MediaType) && d.ArtifactType == "" && (d.Platform == nil || m.Match(*d.Platform)) {
				desc, found = d, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: no image manifest for %s", ref, platforms.DefaultString())
		}
	}
	var man ocispec.Manifest
	if err := fetchJSON(ctx, f, desc, &man); err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if err := fetchJSON(ctx, f, man.Config, &cfg); err != nil {
		return nil, err
	}
	if len(man.Layers) == 0 || len(man.Layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("%s: %d layers, %d diff IDs", ref, len(man.Layers), len(cfg.RootFS.DiffIDs))
	}
	return &image{name: name, manifest: desc, layers: man.Layers, diffIDs: cfg.RootFS.DiffIDs, fetcher: f}, nil
}

func fetchJSON(ctx context.Context, f remotes.Fetcher, desc ocispec.Descriptor, v any) error {
	if desc.Size > 4<<20 {
		return fmt.Errorf("%s: %d bytes is too big for a manifest or config", desc.Digest, desc.Size)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return err
	}
	if int64(len(b)) != desc.Size || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		return errors.New(desc.Digest.String() + ": content does not match its descriptor")
	}
	return json.Unmarshal(b, v)
}

package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/snapshotter"
)

// Options say where and how to pull. The zero value of each field but
// Address is usable.
type Options struct {
	// Address is containerd's gRPC socket, e.g. /run/containerd/containerd.sock.
	Address string
	// Namespace is the containerd namespace (default "default").
	Namespace string
	// Snapshotter is the name containerd knows Strata by (default "strata").
	Snapshotter string
	// PlainHTTP reaches the registry over HTTP; localhost and 127.0.0.1
	// registries are reached over HTTP without it.
	PlainHTTP bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// Result describes a finished pull.
type Result struct {
	Name     string        // image name in containerd's store
	Digest   digest.Digest // of the image's target (manifest or index)
	Layers   int           // layers of the unpacked platform's image
	Lazy     int           // of which served lazily by Strata
	Duration time.Duration
}

// ErrNoAddress is returned when Options.Address is empty.
var ErrNoAddress = errors.New("pull: no containerd address")

// Pull fetches ref's manifest and config into containerd and unpacks it
// into the Strata snapshotter; layers Strata serves lazily are never
// downloaded.
func Pull(ctx context.Context, ref string, opt Options) (*Result, error) {
	opt = opt.withDefaults()
	if opt.Address == "" {
		return nil, ErrNoAddress
	}
	start := time.Now()
	c, err := client.New(opt.Address, client.WithDefaultNamespace(opt.Namespace), client.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", opt.Address, err)
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, opt.Namespace)

	p := &progress{w: opt.Progress, start: start}
	p.printf("pulling %s into containerd %s (namespace %s, snapshotter %s)", ref, opt.Address, opt.Namespace, opt.Snapshotter)
	stopTicker := p.tick()
	img, err := c.Pull(ctx, ref,
		client.WithResolver(docker.NewResolver(docker.ResolverOptions{Hosts: hosts(opt.PlainHTTP)})),
		client.WithPullUnpack,
		client.WithPullSnapshotter(opt.Snapshotter),
		client.WithImageHandlerWrapper(func(h images.Handler) images.Handler {
			return p.handler(AppendLayerLabels(ref)(h))
		}),
	)
	stopTicker()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	res := &Result{Name: img.Name(), Digest: img.Target().Digest}
	res.Layers, res.Lazy, err = countLazy(ctx, img, c, opt.Snapshotter)
	if err != nil {
		return nil, fmt.Errorf("pull %s: inspecting snapshots: %w", ref, err)
	}
	res.Duration = time.Since(start)
	p.printf("done: %s (%s), %d layers, %d mounted lazily, %d unpacked locally, in %s",
		res.Name, res.Digest, res.Layers, res.Lazy, res.Layers-res.Lazy, res.Duration.Round(time.Millisecond))
	return res, nil
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = namespaces.Default
	}
	if o.Snapshotter == "" {
		o.Snapshotter = "strata"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// hosts configures containerd's resolver: HTTP for loopback registries
// (or all with plainHTTP), credentials from the docker config, as
// `strata mount` uses them.
func hosts(plainHTTP bool) docker.RegistryHosts {
	match := docker.MatchLocalhost
	if plainHTTP {
		match = func(string) (bool, error) { return true, nil }
	}
	creds := func(host string) (string, string, error) {
		reg, err := name.NewRegistry(host)
		if err != nil {
			return "", "", nil // anonymous: the registry will say if that is not enough
		}
		a, err := authn.DefaultKeychain.Resolve(reg)
		if err != nil {
			return "", "", err
		}
		cfg, err := a.Authorization()
		if err != nil {
			return "", "", err
		}
		if cfg.IdentityToken != "" {
			return "", cfg.IdentityToken, nil
		}
		return cfg.Username, cfg.Password, nil
	}
	return docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(match),
		docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(creds))),
	)
}

// countLazy reports how many of img's layers are snapshots Strata mounted
// lazily, by the label its snapshotter puts on them.
func countLazy(ctx context.Context, img client.Image, c *client.Client, sn string) (layers, lazy int, err error) {
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return 0, 0, err
	}
	svc := c.SnapshotService(sn)
	for i := range diffIDs {
		info, err := svc.Stat(ctx, identity.ChainID(diffIDs[:i+1]).String())
		if err != nil {
			return 0, 0, err
		}
		if info.Labels[snapshotter.LabelRemote] == "true" {
			lazy++
		}
	}
	return len(diffIDs), lazy, nil
}

// progress prints what the pull is doing, one line per step.
type progress struct {
	w      io.Writer
	start  time.Time
	layers atomic.Int64
}

func (p *progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "[%6.2fs] "+format+"\n", append([]any{time.Since(p.start).Seconds()}, args...)...)
}

// handler reports manifests and layers as containerd's fetch walks them.
func (p *progress) handler(next images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := next.Handle(ctx, desc)
		if err != nil || !images.IsManifestType(desc.MediaType) {
			return children, err
		}
		var n int
		var size int64
		for _, ch := range children {
			if images.IsLayerType(ch.MediaType) {
				n++
				size += ch.Size
			}
		}
		p.layers.Store(int64(n))
		p.printf("manifest %s: %d layers, %d bytes compressed; preparing snapshots", desc.Digest, n, size)
		return children, nil
	})
}

// tick prints a line every two seconds while the unpacker prepares
// layers, so a slow registry does not look like a hang.
func (p *progress) tick() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.printf("still preparing %d layers", p.layers.Load())
			}
		}
	}()
	return func() { close(done); <-finished }
}

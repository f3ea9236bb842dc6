package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/remote"
)

// Takeover: the layer connections of a daemon that stopped for a handover
// or died are kept open by something else (systemd's file descriptor
// store, or Strata's supervisor), and the next daemon serves them again:
// it gets their descriptors back (Inherit), and mounting such a layer
// resumes its connection (ResumeLayer) instead of making a new one, with
// the INIT request saved in the state directory at mount. Whatever uses
// the layer (an overlay, a container's rootfs, a process's open file)
// sees a pause, not an error.

// ConnectionHooks tell the daemon when a layer connection is made and
// when it ends, so that it can keep the connection's descriptor where it
// survives the daemon. Added receives a duplicate of the descriptor, which
// it closes.
type ConnectionHooks struct {
	Added   func(d digest.Digest, dev *os.File)
	Removed func(d digest.Digest)
}

// SetConnectionHooks sets the hooks of the layers mounted from now on.
func (p *Pool) SetConnectionHooks(h ConnectionHooks) { p.hooks = h }

// stateDir is where mounts keep what a takeover needs besides the index.
func (p *Pool) stateDir() string { return filepath.Join(p.dir, ".state") }

// Inherit hands the pool live connections of layers another daemon
// mounted here, by layer digest. An acquisition of one of these layers
// resumes its connection; Unclaimed ends those never acquired.
func (p *Pool) Inherit(conns map[digest.Digest]*os.File) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for d, f := range conns {
		if old := p.inherited[d]; old != nil {
			old.Close()
		}
		p.inherited[d] = f
	}
}

// Inherited reports whether layer d's connection was inherited and not
// yet claimed.
func (p *Pool) Inherited(d digest.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inherited[d] != nil
}

// takeInherited returns the inherited connection of layer d, if any, and
// its INIT request, for mountLayer.
func (p *Pool) takeInherited(d digest.Digest, dir string) (*os.File, []byte) {
	p.mu.Lock()
	f := p.inherited[d]
	delete(p.inherited, d)
	p.mu.Unlock()
	if f == nil {
		return nil, nil
	}
	init, err := os.ReadFile(p.initFile(dir))
	if err != nil {
		slog.Warn("fs: inherited layer connection has no saved INIT; mounting the layer again", "layer", d, "error", err)
		p.endConnection(f, dir)
		return nil, nil
	}
	return f, init
}

func (p *Pool) initFile(dir string) string {
	return filepath.Join(p.stateDir(), filepath.Base(dir)+".init")
}

// resumeRecord is what the pool needs to mount a layer again by itself:
// saved at mount beside the INIT request.
type resumeRecord struct {
	Repo     string       `json:"repo"`
	Insecure bool         `json:"insecure,omitempty"`
	Layer    remote.Layer `json:"layer"`
	Whole    bool         `json:"whole,omitempty"`
}

func (p *Pool) resumeFile(dir string) string {
	return filepath.Join(p.stateDir(), filepath.Base(dir)+".layer")
}

// ResumeInherited serves again, at once, every inherited connection
// (see Inherit) whose layer can be mounted from what its mount saved, so
// that what waits on them (readers of a container's rootfs, an overlay
// being unmounted) is answered before the daemon restores anything else.
// Each resumed layer holds one use of its own until Unclaimed; the
// daemon's restores then acquire the layers they need. It returns the
// digests resumed.
func (p *Pool) ResumeInherited(ctx context.Context) []digest.Digest {
	p.mu.Lock()
	var ds []digest.Digest
	for d := range p.inherited {
		ds = append(ds, d)
	}
	p.mu.Unlock()
	var (
		mu      sync.Mutex
		resumed []digest.Digest
	)
	g := new(errgroup.Group)
	g.SetLimit(8)
	for _, d := range ds {
		g.Go(func() error {
			if err := p.resumeOne(ctx, d); err != nil {
				slog.WarnContext(ctx, "fs: inherited layer connection not resumed", "layer", d, "error", err)
				return nil
			}
			mu.Lock()
			resumed = append(resumed, d)
			mu.Unlock()
			return nil
		})
	}
	g.Wait()
	return resumed
}

func (p *Pool) resumeOne(ctx context.Context, d digest.Digest) error {
	b, err := os.ReadFile(p.resumeFile(p.layerDir(d)))
	var rec resumeRecord
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err == nil && rec.Layer.Digest != d {
		err = fmt.Errorf("saved layer is %s", rec.Layer.Digest)
	}
	var repo name.Repository
	if err == nil {
		var nopts []name.Option
		if rec.Insecure {
			nopts = append(nopts, name.Insecure)
		}
		repo, err = name.NewRepository(rec.Repo, nopts...)
	}
	if err != nil {
		// Nothing to mount it from: end it (Unclaimed would too).
		p.mu.Lock()
		f := p.inherited[d]
		delete(p.inherited, d)
		p.mu.Unlock()
		if f != nil {
			p.endConnection(f, p.layerDir(d))
			if p.hooks.Removed != nil {
				p.hooks.Removed(d)
			}
		}
		return fmt.Errorf("what its mount saved: %w", err)
	}
	var opts []remote.Option
	if rec.Insecure {
		opts = append(opts, remote.WithInsecureRegistries(repo.RegistryStr()))
	}
	if _, err := p.acquire(ctx, repo, rec.Layer, rec.Whole, opts); err != nil {
		return err
	}
	p.mu.Lock()
	if pl := p.layers[d]; pl != nil {
		pl.resumed = true
	}
	p.mu.Unlock()
	return nil
}

// Resumed reports whether layer d's connection was taken over by this
// pool (its mount, and whatever was stacked on it, lived on).
func (p *Pool) Resumed(d digest.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pl := p.layers[d]
	return pl != nil && (pl.resumed || pl.wasResumed)
}

// Unclaimed drops the use each resumed layer held of its own, unmounting
// those nothing else acquired since (their users are gone), and ends the
// inherited connections never resumed. A daemon calls it once it has
// restored its mounts.
func (p *Pool) Unclaimed() {
	p.mu.Lock()
	var own []digest.Digest
	for d, pl := range p.layers {
		if pl.resumed {
			pl.resumed, pl.wasResumed = false, true
			own = append(own, d)
		}
	}
	left := p.inherited
	p.inherited = map[digest.Digest]*os.File{}
	p.mu.Unlock()
	for _, d := range own {
		if err := p.Release(d); err != nil {
			slog.Warn("fs: releasing a resumed layer", "layer", d, "error", err)
		}
	}
	for d, f := range left {
		dir := p.layerDir(d)
		slog.Info("fs: inherited layer connection not used again; unmounting it", "layer", d)
		p.endConnection(f, dir)
		if p.hooks.Removed != nil {
			p.hooks.Removed(d)
		}
	}
}

// endConnection ends an inherited connection nothing serves: its mount
// is detached (never looked at: nothing answers it) and its descriptor
// closed; once the descriptor store lets go of its copy too, the kernel
// aborts the connection, and whatever still held the mount gets errors
// rather than a hang.
func (p *Pool) endConnection(f *os.File, dir string) {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		slog.Warn("fs: detaching an unused layer", "dir", dir, "error", err)
	}
	f.Close()
	removeState(p.stateDir(), dir)
	os.Remove(dir)
}

func (p *Pool) layerDir(d digest.Digest) string {
	return filepath.Join(p.dir, d.Encoded()[:16])
}

// Suspend stops serving every layer without unmounting any, for a daemon
// that hands its connections over (see Inherit): the layers stay mounted
// and their state saved; requests wait in the kernel for the next daemon.
// The pool is unusable afterwards.
func (p *Pool) Suspend() {
	p.saves.Wait()
	p.mu.Lock()
	all := p.layers
	p.layers = map[digest.Digest]*pooled{}
	p.mu.Unlock()
	for _, pl := range all {
		<-pl.ready
		// The connection first: the requests it has read are answered
		// while content and blob still work, so none fails.
		if pl.mount != nil {
			pl.mount.Suspend()
		}
		if pl.content != nil {
			pl.content.Close()
		}
		if pl.blob != nil {
			pl.blob.Close()
		}
	}
}

// FDName is the name a layer connection's descriptor is kept under in a
// file descriptor store; ParseFDName reads it back.
func FDName(d digest.Digest) string { return "layer-" + d.Encoded() }

// ParseFDName returns the layer digest of a descriptor name made by
// FDName.
func ParseFDName(name string) (digest.Digest, bool) {
	hex, ok := strings.CutPrefix(name, "layer-")
	if !ok {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.SHA256, hex)
	if d.Validate() != nil {
		return "", false
	}
	return d, true
}

// connectionMade keeps what a takeover of the connection of layer l's
// mount m needs (its INIT request, where the layer comes from), and hands
// its descriptor to the hooks.
func (p *Pool) connectionMade(repo name.Repository, l remote.Layer, whole bool, opts []remote.Option, m *LayerMount) error {
	if p.hooks.Added == nil {
		return nil
	}
	rec, err := json.Marshal(resumeRecord{
		Repo: repo.String(), Insecure: remote.IsInsecure(repo.RegistryStr(), append(slices.Clone(p.ropts), opts...)...),
		Layer: l, Whole: whole,
	})
	if err != nil {
		return err
	}
	dev, init, err := m.Connection()
	if err != nil {
		return err
	}
	if err := errors.Join(os.WriteFile(p.initFile(m.Dir), init, 0o600), os.WriteFile(p.resumeFile(m.Dir), rec, 0o600)); err != nil {
		dev.Close()
		return fmt.Errorf("saving the layer's connection state: %w", err)
	}
	p.hooks.Added(l.Digest, dev)
	return nil
}

// Serves reports whether dir is the mountpoint of a layer this pool
// serves.
func (p *Pool) Serves(dir string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pl := range p.layers {
		if pl.dir == filepath.Clean(dir) {
			return true
		}
	}
	return false
}

package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
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

// Unclaimed unmounts the layers whose connections were inherited but that
// nothing acquired since (their users are gone), and closes those
// connections. A daemon calls it once it has restored its mounts.
func (p *Pool) Unclaimed() {
	p.mu.Lock()
	left := p.inherited
	p.inherited = map[digest.Digest]*os.File{}
	p.mu.Unlock()
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
	for _, name := range []string{"init", "modes", "pending"} {
		os.Remove(filepath.Join(p.stateDir(), filepath.Base(dir)+"."+name))
	}
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
		if pl.content != nil {
			pl.content.Close()
		}
		if pl.mount != nil {
			pl.mount.Suspend()
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

// connectionMade keeps the INIT request of the connection of layer d's
// mount m for a takeover, and hands its descriptor to the hooks.
func (p *Pool) connectionMade(d digest.Digest, m *LayerMount) error {
	if p.hooks.Added == nil {
		return nil
	}
	dev, init, err := m.Connection()
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.initFile(m.Dir), init, 0o600); err != nil {
		dev.Close()
		return fmt.Errorf("saving the layer's INIT request: %w", err)
	}
	p.hooks.Added(d, dev)
	return nil
}

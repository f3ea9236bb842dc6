package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/snapshotter"
	"github.com/stratafs/strata/store"
)

// Daemon is a running strata daemon.
type Daemon struct {
	cfg        Config
	store      *store.Store
	pool       *fs.Pool
	images     *images
	writable   *writable
	remoteOpts []remote.Option
	emptyDir   string // an empty directory, the bottom lower of one-layer images

	// csn are the snapshotters containerd is served, once open.
	csnMu sync.Mutex
	csn   []*snapshotter.Snapshotter

	// fdStore keeps the layer connections where they outlive the
	// daemon (nil: nowhere; a restart unmounts everything).
	fdStore *fdStore
	// handover is closed to stop for a handover (strata daemon
	// --upgrade): nothing is unmounted, connections are left to the next
	// daemon; handingOver is set once that stop began.
	handover     chan struct{}
	handoverOnce sync.Once
	handingOver  atomic.Bool
}

// layersDir is where layers are mounted, kept short because overlayfs
// takes all lower directories in one page of mount options.
func (c Config) layersDir() string { return filepath.Join(c.Root, "l") }

// Run starts the daemon and serves until ctx is cancelled, then unmounts
// everything it serves. ready, when not nil, is closed once the control
// socket accepts requests.
func Run(ctx context.Context, cfg Config, ready chan<- struct{}) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	st, err := store.Open(cfg.Root, store.Options{ChunkCacheBytes: cfg.CacheSize})
	if err != nil {
		return err
	}
	defer st.Close()
	d := &Daemon{cfg: cfg, store: st, emptyDir: filepath.Join(cfg.Root, "empty"), handover: make(chan struct{})}
	d.fdStore = openFDStore()
	inherited := inheritedFDs()
	if err := os.MkdirAll(d.emptyDir, 0o755); err != nil {
		return err
	}
	d.remoteOpts = []remote.Option{
		remote.WithInsecureRegistries(cfg.InsecureRegistries...),
		remote.WithRequestTimeout(cfg.FetchTimeout.Duration),
		remote.WithMaxConcurrency(cfg.MaxConcurrentRequests),
		remote.WithSpoolDir(filepath.Join(cfg.Root, "tmp")),
		remote.WithUserAgent("strata"),
		remote.WithClientCache(remote.NewClientCache()),
	}
	d.pool, err = fs.NewPool(st, cfg.layersDir(), d.remoteOpts...)
	if err != nil {
		return err
	}
	d.pool.SetPrefetchPolicy(fs.PrefetchPolicy{Mode: cfg.Prefetch, Budget: cfg.PrefetchBudget})
	if d.fdStore != nil {
		d.pool.SetConnectionHooks(fs.ConnectionHooks{Added: d.fdStore.add, Removed: d.fdStore.remove})
	}
	if len(inherited) > 0 {
		// First of all, so that readers waiting on the connections of
		// the previous daemon are answered as soon as possible.
		start := time.Now()
		n := d.inheritLayers(inherited)
		resumed := d.pool.ResumeInherited(ctx)
		slog.Info("layer connections of the previous daemon taken over", "inherited", n, "resumed", len(resumed),
			"duration", time.Since(start).Round(time.Millisecond))
	}
	for _, dir := range []string{cfg.layersDir(), filepath.Join(cfg.writableDir(), "views")} {
		if stale, err := kmount.ClearStale(dir, d.pool.Serves); err != nil {
			d.pool.Close()
			return err
		} else if len(stale) > 0 {
			slog.Info("cleared mounts left by a previous daemon", "under", dir, "count", len(stale))
		}
	}
	d.images = &images{d: d, mounts: map[string]*Mount{}}
	if d.writable, err = openWritable(ctx, d); err != nil {
		d.pool.Close()
		return err
	}
	d.sweepRuns(ctx)
	d.images.restore(ctx)
	defer d.shutdown()
	// Deferred after shutdown so it runs before it: snapshot binds must be
	// gone before the pool unmounts the layers under them.
	stopSnapshots, err := d.serveSnapshots(ctx)
	if err != nil {
		return err
	}
	defer stopSnapshots()
	// Every restore has acquired what it needs: the layers taken over
	// that nothing uses any more go.
	d.pool.Unclaimed()

	ln, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if cfg.MetricsAddress != "" {
		msrv := &http.Server{Addr: cfg.MetricsAddress, Handler: promhttp.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.ListenAndServe() }()
		defer msrv.Close()
	}
	slog.Info("strata daemon serving", "socket", cfg.Socket, "root", cfg.Root, "pid", os.Getpid())
	if ready != nil {
		close(ready)
	}
	if err := notifyReady(); err != nil {
		slog.Warn("telling systemd the daemon is ready", "error", err)
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	case <-d.handover:
		d.handingOver.Store(true)
		err = ErrHandover
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	os.Remove(cfg.Socket)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// fixupRoot holds the fixups of layer stacks (see fs.Pool.FixupDir).
func (d *Daemon) fixupRoot() string { return filepath.Join(d.cfg.Root, "fixups") }

// fixups is the snapshotters' WithFixups: the fixup a stack of layers
// needs, in the fixup root.
func (d *Daemon) fixups(lowers []string) (string, error) {
	return d.pool.FixupDir(lowers, d.fixupRoot())
}

func (d *Daemon) shutdown() {
	if d.handingOver.Load() {
		// Mounts stay, served by the next daemon: stop serving, keep
		// the state it needs, unmount nothing.
		d.writable.sn.Close()
		d.pool.Suspend()
		slog.Info("strata daemon stopped for a handover; mounts left to the next daemon")
		return
	}
	if err := d.images.closeAll(); err != nil {
		slog.Error("unmounting images", "error", err)
	}
	// After the overlays: their lower layers are the writable
	// snapshotter's binds.
	if err := d.writable.close(context.Background()); err != nil {
		slog.Error("closing writable mounts' snapshots", "error", err)
	}
	if err := d.pool.Close(); err != nil {
		slog.Error("unmounting layers", "error", err)
	}
	slog.Info("strata daemon stopped; everything unmounted")
}

// listenUnix listens on path, replacing a stale socket but refusing to
// steal one that a live daemon answers on.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another strata daemon is serving on %s", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

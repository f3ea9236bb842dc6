package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// The containerd comparison's systems: what a user of containerd gets from
// `ctr run` with each snapshotter. Their names differ from the mount
// systems' so their results never mix with those in the summaries.
const (
	ctdOverlay = "ctd-overlayfs" // built-in overlayfs, full pull of the gzip image
	ctdStrata  = "ctd-strata"    // strata daemon as proxy snapshotter, eStargz image
	ctdStargz  = "ctd-stargz"    // stargz-snapshotter's snapshotter as proxy plugin, eStargz image
)

var ctdSystems = []string{ctdOverlay, ctdStrata, ctdStargz}

// ctdRun holds the processes of one cold containerd run; every file of it,
// containerd's root and the snapshotter's state included, is on a tmpfs
// mounted at dir for the run.
type ctdRun struct {
	dir, strata, stargz string // dir; the strata and stargz-bench binaries
	snap                *daemonProc
	snapLog             string
	ctd                 *ctdProc
}

func (c *ctdRun) strataSock() string { return filepath.Join(c.dir, "strata", "c.sock") }
func (c *ctdRun) stargzSock() string { return filepath.Join(c.dir, "stargz", "s.sock") }

// measureCtd does one cold run of workload w's command with `ctr run`:
// fresh containerd and snapshotter, page cache dropped, then the timed
// pull and `ctr run --rm`. MountSeconds holds the pull's share.
func (r *runner) measureCtd(ctx context.Context, sys string, img imageSpec, w workload, profile string, run int) []result {
	base := result{Profile: profile, Image: img.Name, Workload: w.Name, System: sys, State: "cold", Run: run}
	c := &ctdRun{dir: filepath.Join(r.o.work, "run", "ctd"), strata: r.o.strata, stargz: r.o.stargz}
	defer func() {
		t := time.Now()
		c.keepLog(filepath.Join(r.o.work, "logs", fmt.Sprintf("%s-%s-%s-%s-%d.log", profile, img.Name, w.Name, sys, run)))
		if err := c.teardown(); err != nil {
			r.log.Warn("containerd teardown", "system", sys, "err", err)
		}
		r.log.Debug("containerd teardown", "system", sys, "took", time.Since(t))
	}()
	fail := func(err error) []result {
		r.log.Error("containerd measurement failed", "system", sys, "image", img.Name, "err", err)
		base.Err = err.Error()
		return []result{base}
	}
	secs, pull, err := c.measure(ctx, r, sys, img, w)
	if err != nil {
		return fail(err)
	}
	// The proxy's counts are read before the check below: stargz's
	// background fetch keeps going, and only the bytes up to the
	// command's result belong to this measurement.
	res := r.finish(base, "cold", secs, 0)
	res.MountSeconds = pull
	if err := c.verifyLazy(ctx, sys, r.px.Host()+"/"+img.Name+":estargz"); err != nil {
		return fail(err)
	}
	r.saveLog(res)
	r.log.Info("cold", "system", sys, "image", img.Name, "workload", w.Name, "profile", profile,
		"s", fmt.Sprintf("%.2f", secs), "pull", fmt.Sprintf("%.2f", pull), "MB", res.Bytes>>20, "req", res.Requests)
	return []result{res}
}

func (c *ctdRun) measure(ctx context.Context, r *runner, sys string, img imageSpec, w workload) (secs, pull float64, err error) {
	if len(w.Chroot) == 0 {
		return 0, 0, fmt.Errorf("workload %s has no command to run in a container", w.Name)
	}
	t := time.Now()
	if err := c.prepare(ctx, sys, r.px.Host()); err != nil {
		return 0, 0, err
	}
	r.log.Debug("containerd prepare", "system", sys, "took", time.Since(t))
	if r.ctdVersion == "" {
		r.ctdVersion, _ = c.ctd.ctr(ctx, "version")
	}
	t = time.Now()
	if err := dropCaches(); err != nil {
		return 0, 0, fmt.Errorf("drop caches: %w", err)
	}
	r.log.Debug("drop caches", "took", time.Since(t))
	tag := "estargz"
	if sys == ctdOverlay {
		tag = "gzip"
	}
	ref := r.px.Host() + "/" + img.Name + ":" + tag
	r.px.ResetStats()
	t0 := time.Now()
	if err := c.pull(ctx, sys, ref); err != nil {
		return 0, 0, err
	}
	pull = time.Since(t0).Seconds()
	args := []string{"run", "--rm"}
	if sn := snapshotterOf(sys); sn != "overlayfs" {
		args = append(args, "--snapshotter", sn)
	}
	args = append(append(args, ref, fmt.Sprintf("bench-%d", time.Now().UnixNano())), w.Chroot...)
	if _, err := c.ctd.ctr(ctx, args...); err != nil {
		return 0, 0, fmt.Errorf("%w\nsnapshotter log: %s", err, tailFile(c.snapLog))
	}
	return time.Since(t0).Seconds(), pull, nil
}

func snapshotterOf(sys string) string {
	switch sys {
	case ctdStrata:
		return "strata"
	case ctdStargz:
		return "stargz"
	default:
		return "overlayfs"
	}
}

// prepare empties dir, starts the system's snapshotter (none for
// overlayfs, which is built in) and then containerd, which knows Strata
// as "strata" and stargz-snapshotter as "stargz".
func (c *ctdRun) prepare(ctx context.Context, sys, regHost string) error {
	return c.prepareWith(ctx, sys, regHost, map[string]string{"strata": c.strataSock(), "stargz": c.stargzSock()})
}

// prepareWith is prepare with containerd's proxy plugins given: name →
// socket.
func (c *ctdRun) prepareWith(ctx context.Context, sys, regHost string, plugins map[string]string) error {
	if err := resetDir(c.dir); err != nil {
		return err
	}
	// A tmpfs makes the teardown instant: removing an unpacked image from
	// ext4 takes longer than its pull. Every system's state is on it, so
	// none writes to a slower medium than the others.
	if err := syscall.Mount("tmpfs", c.dir, "tmpfs", 0, "size=8g,mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", c.dir, err)
	}
	var err error
	switch sys {
	case ctdStrata:
		d := filepath.Join(c.dir, "strata")
		err = c.startSnapshotter(ctx, c.strata, []string{"daemon", "--supervise=false", "--root", filepath.Join(d, "root"),
			"--socket", filepath.Join(d, "s.sock"), "--containerd-socket", c.strataSock(), "--insecure-registry", regHost},
			c.strataSock())
	case ctdStargz:
		err = c.startSnapshotter(ctx, c.stargz, []string{"--root", filepath.Join(c.dir, "stargz", "root"),
			"--snapshotter-socket", c.stargzSock()}, c.stargzSock())
	}
	if err != nil {
		return err
	}
	ctdDir := filepath.Join(c.dir, "containerd")
	if err := os.MkdirAll(ctdDir, 0o755); err != nil {
		return err
	}
	c.ctd, err = startContainerd(ctx, ctdDir, plugins)
	return err
}

func (c *ctdRun) startSnapshotter(ctx context.Context, bin string, args []string, sock string) error {
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return err
	}
	c.snapLog = sock + ".log"
	p, err := startProc(bin, args, c.snapLog)
	if err != nil {
		return err
	}
	c.snap = p
	return waitSocket(ctx, p, sock, c.snapLog)
}

// pull is what each system needs before `ctr run`: ctr's full pull and
// unpack into overlayfs, or `strata pull`, which unpacks with CRI's
// remote-snapshot labels; stargz-snapshotter reads those too
// (service/cri.go), next to the ones its own rpull sets.
func (c *ctdRun) pull(ctx context.Context, sys, ref string) error {
	if sys == ctdOverlay {
		_, err := c.ctd.ctr(ctx, "image", "pull", "--plain-http", ref)
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(pctx, c.strata, "pull", "--containerd-address", c.ctd.address, "--namespace", ctdNamespace,
		"--snapshotter", snapshotterOf(sys), "--insecure", ref)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("strata pull: %w\n%s\nsnapshotter log: %s", err, lastN(out, 2000), tailFile(c.snapLog))
	}
	return nil
}

// remoteLabel is the label each lazy snapshotter puts on a layer snapshot
// it mounted from the registry instead of unpacking it.
var remoteLabel = map[string]string{
	ctdStrata: "containerd.io/snapshot/strata.remote",
	ctdStargz: "containerd.io/snapshot/remote", // stargz-snapshotter's snapshot/snapshot.go
}

// verifyLazy fails when fewer of the image's layers than it has were
// mounted lazily (see verifyRemote). It runs after the timed part.
func (c *ctdRun) verifyLazy(ctx context.Context, sys, ref string) error {
	label, ok := remoteLabel[sys]
	if !ok {
		return nil
	}
	layers, err := layerCount(ctx, ref)
	if err != nil {
		return err
	}
	return c.verifyRemote(ctx, snapshotterOf(sys), label, layers)
}

// keepLog copies the snapshotter's log next to the proxy's request logs,
// for the analysis of where a run's time went.
func (c *ctdRun) keepLog(path string) {
	if c.snapLog != "" {
		keepFile(c.snapLog, path)
	}
}

// keepFile copies src to dst, when src exists; a log kept for analysis.
func keepFile(src, dst string) {
	if b, err := os.ReadFile(src); err == nil && os.MkdirAll(filepath.Dir(dst), 0o755) == nil {
		_ = os.WriteFile(dst, b, 0o644)
	}
}

// teardown stops containerd first (its containers sit on the snapshots),
// then the snapshotter (which unmounts its layers), then unmounts what is
// left under dir, the tmpfs last, and removes dir.
func (c *ctdRun) teardown() error {
	c.ctd.stop()
	c.snap.stop()
	c.ctd, c.snap = nil, nil
	return errors.Join(resetDir(c.dir), os.RemoveAll(c.dir))
}

package main

import (
	"context"
	"fmt"
	"github.com/stratafs/strata/test/containerd"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The BuildKit comparison (issue 16): BuildKit's containerd worker builds
// `FROM golang` (the eStargz image) + `RUN go version` and pushes the
// result with store=false, cold, on each snapshotter containerd can give
// it: its own overlayfs (a full pull), stargz-snapshotter, and Strata
// registered under the name "stargz" (BuildKit takes its lazy path only
// for a snapshotter of that name). Everything runs on a fresh tmpfs per
// run, as the containerd rows do (containerd_run.go).
const (
	bkOverlay = "bk-overlayfs"
	bkStrata  = "bk-strata"
	bkStargz  = "bk-stargz"
)

var bkSystems = []string{bkOverlay, bkStrata, bkStargz}

// bkWorkload names the build in results and the report.
const bkWorkload = "bk-goversion"

// bkDockerfile is what BuildKit builds; BASE is the eStargz golang image.
const bkDockerfile = "ARG BASE\nFROM $BASE\nRUN go version > /v\n"

// bkSnapshotter is the snapshotter name buildkitd is given for sys.
func bkSnapshotter(sys string) string {
	if sys == bkOverlay {
		return "overlayfs"
	}
	return "stargz"
}

// measureBK does one cold BuildKit build on sys.
func (r *runner) measureBK(ctx context.Context, sys string, img imageSpec, profile string, run int) []result {
	base := result{Profile: profile, Image: img.Name, Workload: bkWorkload, System: sys, State: "cold", Run: run}
	c := &ctdRun{dir: filepath.Join(r.o.work, "run", "ctd"), strata: r.o.strata, stargz: r.o.stargz}
	var bk *daemonProc
	defer func() {
		c.keepLog(filepath.Join(r.o.work, "logs", fmt.Sprintf("%s-%s-%s-%s-%d.log", profile, img.Name, bkWorkload, sys, run)))
		bk.stop()
		if err := c.teardown(); err != nil {
			r.log.Warn("buildkit teardown", "system", sys, "err", err)
		}
	}()
	fail := func(err error) []result {
		r.log.Error("buildkit measurement failed", "system", sys, "image", img.Name, "err", err)
		base.Err = err.Error()
		return []result{base}
	}
	// Strata is the plugin named "stargz" for bk-strata; for the others
	// the names are the containerd rows' own.
	plugins := map[string]string{"strata": c.strataSock(), "stargz": c.stargzSock()}
	snapSys := map[string]string{bkOverlay: ctdOverlay, bkStrata: ctdStrata, bkStargz: ctdStargz}[sys]
	if sys == bkStrata {
		// Its own socket: containerd collects each name's garbage on its
		// own, and would remove one name's snapshots from a shared one.
		plugins["stargz"] = containerd.StargzSocket(c.strataSock())
	}
	if err := c.prepareWith(ctx, snapSys, r.px.Host(), plugins); err != nil {
		return fail(err)
	}
	bkDir := filepath.Join(c.dir, "bk")
	addr := "unix://" + filepath.Join(bkDir, "b.sock")
	var err error
	if bk, err = startBuildKitd(ctx, r.o.buildkitd, r.o.buildctl, bkDir, addr, c.ctd.address, bkSnapshotter(sys), r.px.Host()); err != nil {
		return fail(err)
	}
	ctxDir := filepath.Join(c.dir, "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(bkDockerfile), 0o644); err != nil {
		return fail(err)
	}
	baseRef := r.px.Host() + "/" + img.Name + ":estargz"
	// The base's own repository: BuildKit on overlayfs then finds the
	// base's blobs there (in another repository it uploads them all
	// again, 139 MB, having mounted none), as the lazy systems do.
	newRef := fmt.Sprintf("%s/%s:bk-%s-%d", r.px.Host(), img.Name, sys, run)
	if err := dropCaches(); err != nil {
		return fail(fmt.Errorf("drop caches: %w", err))
	}
	r.px.ResetStats()
	t0 := time.Now()
	out, err := buildctl(ctx, r.o.buildctl, addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context="+ctxDir, "--local", "dockerfile="+ctxDir, "--opt", "build-arg:BASE="+baseRef,
		"--output", "type=image,name="+newRef+",push=true,store=false,registry.insecure=true")
	secs := time.Since(t0).Seconds()
	if err != nil {
		return fail(fmt.Errorf("%w\n%s\nsnapshotter log: %s", err, lastN([]byte(out), 2000), tailFile(c.snapLog)))
	}
	res := r.finish(base, "cold", secs, 0)
	res.BytesIn = r.px.Stats().BytesIn
	if sys != bkOverlay {
		layers, err := layerCount(ctx, baseRef)
		if err != nil {
			return fail(err)
		}
		if err := c.verifyRemote(ctx, "stargz", remoteLabel[snapSys], layers); err != nil {
			return fail(err)
		}
	}
	r.saveLog(res)
	r.log.Info("cold", "system", sys, "image", img.Name, "workload", bkWorkload, "profile", profile,
		"s", fmt.Sprintf("%.2f", secs), "MB", res.Bytes>>20, "req", res.Requests)
	return []result{res}
}

// startBuildKitd starts buildkitd with only its containerd worker, on the
// given snapshotter, reaching registry (the proxy) over plain HTTP, and
// waits (at most 60 s) until buildctl sees its worker.
func startBuildKitd(ctx context.Context, bin, ctl, dir, addr, ctdAddr, snapshotter, registry string) (*daemonProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "[registry.%q]\n  http = true\n", registry), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "buildkitd.log")
	p, err := startProc(bin, []string{"--config", cfg, "--root", filepath.Join(dir, "root"), "--addr", addr,
		"--oci-worker=false", "--containerd-worker=true", "--containerd-worker-addr", ctdAddr,
		"--containerd-worker-namespace", ctdNamespace, "--containerd-worker-snapshotter", snapshotter,
		"--containerd-worker-net", "host", "--containerd-worker-gc=false"}, logPath)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := buildctl(ctx, ctl, addr, "debug", "workers"); err == nil {
			return p, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("buildkitd not ready within 60s: %s", tailFile(logPath))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// buildctl runs buildctl against addr, bounded to 10 minutes.
func buildctl(ctx context.Context, bin, addr string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--addr", addr}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("buildctl %s: %w", args[0], err)
	}
	return string(out), nil
}

// layerCount is the number of layers of the image ref.
func layerCount(ctx context.Context, ref string) (int, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return 0, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return 0, err
	}
	ls, err := img.Layers()
	return len(ls), err
}

// verifyRemote fails unless at least want committed snapshots of the
// snapshotter sn carry label, the mark of a layer mounted from the
// registry: fewer means a base layer was downloaded and unpacked, and the
// run would time a full pull under a lazy system's name. (A build step's
// own layer is committed too, without the label.)
func (c *ctdRun) verifyRemote(ctx context.Context, sn, label string, want int) error {
	out, err := c.ctd.ctr(ctx, "snapshots", "--snapshotter", sn, "ls")
	if err != nil {
		return err
	}
	n := 0
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 || f[len(f)-1] != "Committed" {
			continue
		}
		info, err := c.ctd.ctr(ctx, "snapshots", "--snapshotter", sn, "info", f[0])
		if err != nil {
			return err
		}
		if strings.Contains(info, strconv.Quote(label)) {
			n++
		}
	}
	if n < want {
		return fmt.Errorf("%d of the base's %d layers were mounted lazily (label %s); the others were downloaded", n, want, label)
	}
	return nil
}

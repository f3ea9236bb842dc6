package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestContainerdReport checks the containerd section: one row per
// measured command (never the derived mount rows), the pull share, and a
// met and a MISSED target.
func TestContainerdReport(t *testing.T) {
	res := &runResults{Containerd: "Client:\n  Version:  1.6.20~ds1\n\nServer:\n  Version:  1.6.20~ds1\n  UUID: x\n"}
	add := func(sys string, secs, pull float64, bytes int64) {
		res.Results = append(res.Results, result{Profile: "wan", Image: "golang", Workload: "goversion", System: sys,
			State: "cold", Seconds: secs, MountSeconds: pull, Bytes: bytes, Requests: 7})
	}
	add(ctdOverlay, 20, 19.5, 147e6)
	for _, s := range []float64{2, 3, 4} {
		add(ctdStrata, s, 1, 9e6)     // median 3: 6.7× sooner than overlayfs
		add(ctdStargz, 2.5, 0.7, 8e6) // sooner than strata
	}
	var buf bytes.Buffer
	if err := renderReport(&buf, res); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"private containerd 1.6.20~ds1 ",
		"| wan | golang | `/usr/bin/env GOROOT=/usr/local/go /usr/local/go/bin/go version` | 20.000 (20.000–20.000) n=1 · 147.0 MB · 7 req · pull 19.50 s | 3.000 (2.000–4.000) n=3 · 9.0 MB · 7 req · pull 1.00 s | 2.500 (2.500–2.500) n=3 · 8.0 MB · 7 req · pull 0.70 s | 0.15 | 1.20 |",
		"| wan cold, golang: `ctr run` result ≥ 5× sooner than overlayfs full pull | 3.00 s vs 20.00 s (6.7×) | met |",
		"| wan cold, golang: `ctr run` result sooner than stargz-snapshotter | 3.00 s vs 2.50 s | **MISSED** |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(out, "| wan | golang |"); n != 1 {
		t.Errorf("%d containerd rows for wan/golang, want 1", n)
	}
	// The chroot tables must not pick the containerd systems up.
	if strings.Contains(out, "## Results over `wan`") {
		t.Error("containerd results leaked into the chroot tables")
	}
	if t.Failed() {
		t.Log(out)
	}
}

func TestContainerdNotMeasured(t *testing.T) {
	var buf bytes.Buffer
	renderContainerd(&buf, &runResults{}, summarize(nil))
	if !strings.Contains(buf.String(), "_Not measured in this run._") {
		t.Errorf("empty section is %q", buf.String())
	}
}

// TestPullRunsCapsOverlayfs: the QUICK cap on full-pull runs applies to the
// containerd overlayfs baseline, and only to it.
func TestPullRunsCapsOverlayfs(t *testing.T) {
	e := entry{Runs: 3, PullRuns: 1, Containerd: true, Systems: ctdSystems}
	for sys, want := range map[string]int{ctdOverlay: 1, ctdStrata: 3, ctdStargz: 3} {
		if got := e.runsOf(sys); got != want {
			t.Errorf("runsOf(%s) = %d, want %d", sys, got, want)
		}
	}
}

// TestExited tells a running child from a zombie one: the snapshotter's
// wait for its socket gives up at once when the process died.
func TestExited(t *testing.T) {
	p, err := startProc("sleep", []string{"30"}, t.TempDir()+"/log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	if exited(p.cmd.Process.Pid) {
		t.Fatal("running sleep reported as exited")
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !exited(p.cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("killed sleep not reported as exited within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	err = waitSocket(context.Background(), p, t.TempDir()+"/never.sock", t.TempDir()+"/log")
	if err == nil || !strings.Contains(err.Error(), "exited at start") {
		t.Fatalf("waitSocket on a dead process: %v", err)
	}
}

// TestContainerdConfig starts the private containerd with the bench's
// config and checks that it loads both proxy snapshotters.
func TestContainerdConfig(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Skip("containerd not installed (make bench-tools installs it)")
	}
	dir, err := os.MkdirTemp("/tmp", "bench-ctd-") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := startContainerd(ctx, dir, map[string]string{"strata": dir + "/strata.sock", "stargz": dir + "/stargz.sock"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	out, err := c.ctr(ctx, "plugins", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"io.containerd.snapshotter.v1", "strata", "stargz", "overlayfs"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctr plugins ls lacks %q:\n%s", want, out)
		}
	}
	if v := ctdServerVersion(mustCtr(t, ctx, c, "version")); v == "containerd" {
		t.Errorf("server version %q", v)
	}
}

func mustCtr(t *testing.T, ctx context.Context, c *ctdProc, args ...string) string {
	t.Helper()
	out, err := c.ctr(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

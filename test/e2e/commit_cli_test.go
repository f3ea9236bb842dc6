package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
)

// cli runs the strata CLI against the bench's daemon; it returns the
// combined output and the error.
func (e *ctdEnv) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(os.Environ(), "STRATA_SOCKET="+filepath.Join(filepath.Dir(e.sock), "s.sock"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *ctdEnv) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := e.cli(ctx, args...)
	if err != nil {
		t.Fatalf("strata %v: %v\n%s\ndaemon log:\n%s", args, err, out, e.daemonLog())
	}
	return out
}

// blockUploads holds every blob upload at the proxy until release is
// called, then fails it; hit is closed when the first one arrives.
func blockUploads() (fault func(http.ResponseWriter, *http.Request) bool, hit <-chan struct{}, release func()) {
	return holdRequests(func(req *http.Request) bool {
		return req.Method == http.MethodPatch && strings.Contains(req.URL.Path, "/blobs/uploads/")
	}, true)
}

// holdRequests holds every request match selects at the proxy until
// release is called; then it fails it (503) with fail, or lets it
// through. hit is closed when the first one arrives.
func holdRequests(match func(*http.Request) bool, fail bool) (fault func(http.ResponseWriter, *http.Request) bool, hit <-chan struct{}, release func()) {
	h, r := make(chan struct{}), make(chan struct{})
	var once, rel sync.Once
	fault = func(w http.ResponseWriter, req *http.Request) bool {
		if !match(req) {
			return false
		}
		once.Do(func() { close(h) })
		select {
		case <-r:
		case <-req.Context().Done():
		}
		if fail {
			http.Error(w, "released", http.StatusServiceUnavailable)
		}
		return fail
	}
	return fault, h, func() { rel.Do(func() { close(r) }) }
}

// TestCommitCLI drives the build path with the strata binary and a daemon
// process: strata run steps recorded in the history, a commit refused
// while a run is running, SIGKILL of the CLI and of the daemon in the
// middle of a commit's push (no manifest, store consistent, rerun gives
// the undisturbed digest), and every format's result pulled in full and
// run by containerd with its overlayfs snapshotter, and read by skopeo.
func TestCommitCLI(t *testing.T) {
	e := startCtdEnv(t)
	layers, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	base, _ := e.pushImage(t, "commit-cli", layers, fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))
	direct := func(ref string) string { return strings.Replace(ref, e.proxy.Host(), e.reg.Host(), 1) }
	dir := t.TempDir()
	e.mustCLI(t, "mount", "--rw", base, dir)
	t.Cleanup(func() {
		if out, err := e.cli(context.Background(), "umount", "--discard", dir); err != nil {
			t.Logf("umount --discard: %v\n%s", err, out)
		}
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	e.mustCLI(t, "run", dir, "--", "sh", "-c", "echo built > /work/out.txt")
	e.mustCLI(t, "run", "--user", "root", dir, "--", "rm", "/data/hello.txt")

	t.Run("refused while a run runs", func(t *testing.T) {
		run := exec.Command(e.bin, "run", dir, "--", "sh", "-c", "touch /work/started; while [ ! -e /work/stop ]; do sleep 0.1; done; rm /work/started /work/stop")
		run.Env = append(os.Environ(), "STRATA_SOCKET="+filepath.Join(filepath.Dir(e.sock), "s.sock"))
		if err := run.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(filepath.Join(dir, "work/stop"), nil, 0o644)
			run.Wait()
		}()
		deadline := time.Now().Add(60 * time.Second)
		for _, err := os.Stat(filepath.Join(dir, "work/started")); err != nil; _, err = os.Stat(filepath.Join(dir, "work/started")) {
			if time.Now().After(deadline) {
				t.Fatal("the run did not start within 60s")
			}
			time.Sleep(50 * time.Millisecond)
		}
		out, err := e.cli(context.Background(), "commit", dir, tagged(base, "during-run"))
		if err == nil || !strings.Contains(out, "a 'strata run', commit or unmount is in progress") {
			t.Errorf("commit during a run: %v\n%s", err, out)
		}
	})

	epochFlag := "--source-date-epoch=1900000000"
	good := strings.TrimSpace(e.mustCLI(t, "commit", "-q", epochFlag, dir, tagged(base, "good")))
	goodDigest := good[strings.LastIndex(good, "@")+1:]
	cfg, _ := remoteImage(t, direct(tagged(base, "good"))).ConfigFile()
	if h := cfg.History[len(cfg.History)-1]; !strings.Contains(h.CreatedBy, "strata run -- sh -c 'echo built > /work/out.txt' && strata run -- rm /data/hello.txt") {
		t.Errorf("created_by %q does not record the runs", h.CreatedBy)
	}

	for _, victim := range []string{"cli", "daemon"} {
		t.Run("SIGKILL of the "+victim, func(t *testing.T) {
			target := tagged(base, "killed-"+victim)
			fault, hit, release := blockUploads()
			e.proxy.SetFault(fault)
			defer e.proxy.SetFault(nil)
			defer release()
			// A repository of its own, so the new layer must be uploaded.
			target = strings.Replace(target, "/commit-cli:", "/commit-cli-"+victim+":", 1)
			cmd := exec.Command(e.bin, "commit", epochFlag, dir, target)
			cmd.Env = append(os.Environ(), "STRATA_SOCKET="+filepath.Join(filepath.Dir(e.sock), "s.sock"))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-hit:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				t.Fatal("no upload within 2 minutes")
			}
			if victim == "cli" {
				cmd.Process.Kill()
			} else {
				e.stopDaemon(t, syscall.SIGKILL)
			}
			cmd.Wait()
			release()
			e.proxy.SetFault(nil)
			time.Sleep(2 * time.Second) // a push the kill did not stop would end now
			if hasManifest(t, direct(target)) {
				t.Errorf("a manifest is at %s after the %s was killed mid-commit", target, victim)
			}
			if victim == "daemon" {
				e.startDaemon(t)
				cl := daemon.NewClient(filepath.Join(filepath.Dir(e.sock), "s.sock"))
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					if _, err := cl.Status(context.Background()); err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("the restarted daemon does not answer:\n%s", e.daemonLog())
					}
				}
			}
			checkStore(t, e.root)
			out := strings.TrimSpace(e.mustCLI(t, "commit", "-q", epochFlag, dir, target))
			if got := out[strings.LastIndex(out, "@")+1:]; got != goodDigest {
				t.Errorf("the rerun after the %s was killed made %s, an undisturbed commit %s", victim, got, goodDigest)
			}
		})
	}

	for i, format := range commitFormats {
		t.Run("containerd "+formatTag(format), func(t *testing.T) {
			ref := tagged(base, "ctd-"+formatTag(format))
			e.mustCLI(t, "commit", "-q", "--format", format, dir, ref)
			skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)
			skopeo(t, "copy", "--quiet", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "copy")+":v1")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if out, err := e.ctd.Ctr(ctx, "images", "pull", "--plain-http", ref); err != nil {
				t.Fatalf("ctr pull: %v\n%s", err, out)
			}
			id := "commit-" + string(rune('a'+i))
			out, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", "overlayfs", ref, id, "/bin/sh", "-c", "cat /work/out.txt; test -e /data/hello.txt && echo hello-still-there; true")
			if err != nil {
				t.Fatalf("ctr run: %v\n%s", err, out)
			}
			if out != "built\n" {
				t.Errorf("the container printed %q, want %q", out, "built\n")
			}
		})
	}
}

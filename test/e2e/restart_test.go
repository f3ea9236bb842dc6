package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	tcontainerd "github.com/stratafs/strata/test/containerd"
	"github.com/stratafs/strata/test/fixture"
)

// readerEnv, set to a readerSpec in JSON, makes the test binary a reader
// process (see runReader).
const readerEnv = "STRATA_E2E_READER"

// readerSpec is what a reader process reads, and where it reports.
type readerSpec struct {
	Dir      string            // its working directory: a mount
	Held     string            // opened once, before anything else, and read through that handle
	Files    []string          // read in turn, relative to Dir
	Sums     map[string]string // sha256 hex of every file, Held included
	Progress string            // rewritten with the number of reads done
	Stop     string            // the loop ends once this file exists
}

// readerResult is what a reader process prints.
type readerResult struct {
	Reads    int
	Errors   []string
	MaxStall time.Duration
}

// runReader reads the spec's files in a loop, through paths relative to
// its working directory inside the mount and through a handle opened
// before anything happened to the daemon, dropping their pages after each
// read so that every read needs the daemon again; it reports every error
// or wrong byte, and the longest single read.
func runReader(specJSON string) int {
	var spec readerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Println(err)
		return 2
	}
	if err := os.Chdir(spec.Dir); err != nil {
		fmt.Println(err)
		return 2
	}
	held, err := os.Open(spec.Held)
	if err != nil {
		fmt.Println(err)
		return 2
	}
	var res readerResult
	check := func(name string, read func() ([]byte, error)) {
		start := time.Now()
		b, err := read()
		res.MaxStall = max(res.MaxStall, time.Since(start))
		sum := sha256.Sum256(b)
		switch {
		case err != nil:
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", name, err))
		case hex.EncodeToString(sum[:]) != spec.Sums[name]:
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %d bytes, wrong content", name, len(b)))
		}
		res.Reads++
	}
	deadline := time.Now().Add(5 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		if _, err := os.Stat(spec.Stop); err == nil {
			break
		}
		name := spec.Files[i%len(spec.Files)]
		check(name, func() ([]byte, error) {
			f, err := os.Open(name)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			return b, err
		})
		check(spec.Held, func() ([]byte, error) {
			st, err := held.Stat()
			if err != nil {
				return nil, err
			}
			b := make([]byte, st.Size())
			_, err = held.ReadAt(b, 0)
			unix.Fadvise(int(held.Fd()), 0, 0, unix.FADV_DONTNEED)
			return b, err
		})
		os.WriteFile(spec.Progress, []byte(strconv.Itoa(res.Reads)), 0o644)
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// holdBlobReads holds every ranged blob read at the proxy until release
// is called, then lets it through; hit is closed when the first arrives.
func holdBlobReads() (fault func(http.ResponseWriter, *http.Request) bool, hit <-chan struct{}, release func()) {
	return holdRequests(func(req *http.Request) bool {
		return req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") && req.Header.Get("Range") != ""
	}, false)
}

// TestDaemonRestartIsInvisible: a process working in a lazy mount (its
// working directory there, a file held open, files not read before, their
// pages dropped after every read so that each read needs the daemon) and
// a containerd container reading its rootfs in a loop go on, with every
// byte right and no failed read, while the daemon is SIGKILLed, SIGKILLed
// again in the middle of a registry read, and upgraded (strata daemon
// --upgrade). The supervisor brings the daemon back each time; the worst
// stalls are reported. Afterwards nothing is left: no mount, no process.
func TestDaemonRestartIsInvisible(t *testing.T) {
	e := startCtdEnv(t)
	bb, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	var data fixture.LayerSpec
	sums := map[string]string{}
	var files []string
	var sumLines strings.Builder
	for i := range 40 {
		name := fmt.Sprintf("data/f%02d", i)
		size := int64(40<<10 + i*3<<10)
		data = append(data, fixture.Reg(name, size, uint64(100+i)))
		b, _ := io.ReadAll(fixture.Content(size, uint64(100+i)))
		sum := sha256.Sum256(b)
		sums[name] = hex.EncodeToString(sum[:])
		files = append(files, name)
		fmt.Fprintf(&sumLines, "%s  /%s\n", sums[name], name)
	}
	held := fixture.Reg("held.bin", 1<<20, 7)
	hb, _ := io.ReadAll(fixture.Content(1<<20, 7))
	hsum := sha256.Sum256(hb)
	sums["held.bin"] = hex.EncodeToString(hsum[:])
	data = append(data, held, fixture.Text("sums", sumLines.String()))
	// A layer nothing reads but the "while answering" case, so that its
	// read needs the registry whatever the background fetch took.
	untouched := fixture.LayerSpec{fixture.Reg("untouched/big", 2<<20, 9), fixture.Reg("untouched/second", 1<<20, 10)}
	ub, _ := io.ReadAll(fixture.Content(2<<20, 9))
	ub2, _ := io.ReadAll(fixture.Content(1<<20, 10))
	ref, _ := e.pushImage(t, "restart", append(bb, data, untouched), fixture.FormEStargz, fixture.WithConfig(fixture.BusyboxConfig()))

	ctl := daemon.NewClient(e.control)
	status := func() daemon.Status {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := ctl.Status(ctx)
		if err != nil {
			t.Fatalf("daemon status: %v\n%s", err, e.daemonLog())
		}
		return *st
	}
	if st := status(); !st.Supervised {
		t.Fatalf("the daemon runs without a descriptor store: %+v", st)
	}

	dir := t.TempDir()
	e.mustCLI(t, "mount", ref, dir)
	t.Cleanup(func() {
		if out, err := e.cli(context.Background(), "umount", dir); err != nil {
			t.Logf("umount: %v\n%s", err, out)
		}
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})

	// A writable mount with a file held open for writing: its overlay
	// (on the same upper directory) must live on, never be mounted twice.
	rw := t.TempDir()
	e.mustCLI(t, "mount", "--rw", ref, rw)
	t.Cleanup(func() {
		if out, err := e.cli(context.Background(), "umount", "--discard", rw); err != nil {
			t.Logf("umount --discard: %v\n%s", err, out)
		}
		syscall.Unmount(rw, syscall.MNT_DETACH)
	})
	wf, err := os.Create(filepath.Join(rw, "log.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	fmt.Fprintln(wf, "before")

	// The reader process.
	work := t.TempDir()
	spec, _ := json.Marshal(readerSpec{Dir: dir, Held: "held.bin", Files: files, Sums: sums,
		Progress: filepath.Join(work, "progress"), Stop: filepath.Join(work, "stop")})
	reader := exec.Command(os.Args[0], "-test.run=^$")
	reader.Env = append(os.Environ(), readerEnv+"="+string(spec))
	var readerOut bytes.Buffer
	reader.Stdout, reader.Stderr = &readerOut, &readerOut
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	readerDone := make(chan struct{})
	go func() { reader.Wait(); close(readerDone) }()
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(work, "stop"), nil, 0o644)
		select {
		case <-readerDone:
		case <-time.After(30 * time.Second):
			reader.Process.Kill()
			select {
			case <-readerDone:
			case <-time.After(10 * time.Second):
				t.Error("the reader cannot be killed: it waits on a mount nothing serves")
			}
		}
	})
	progress := func() int {
		b, _ := os.ReadFile(filepath.Join(work, "progress"))
		n, _ := strconv.Atoi(string(b))
		return n
	}
	waitProgress := func(more int) {
		t.Helper()
		target := progress() + more
		for deadline := time.Now().Add(60 * time.Second); progress() < target; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the reader is stuck at %d reads:\n%s\n%s", progress(), readerOut.String(), e.daemonLog())
			}
		}
	}

	// The container: reads its rootfs in a loop, checking every file's
	// sum, until /ctl/stop exists (a bind of a host directory).
	e.pull(t, ref)
	ctlDir := t.TempDir()
	script := `n=0; while [ ! -e /ctl/stop ]; do sha256sum -c -s /sums || { echo FAIL; exit 1; }; n=$((n+1)); echo "pass $n"; done; echo "done $n"`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctr := e.ctd.CtrCommand(ctx, "run", "--rm", "--snapshotter", tcontainerd.Snapshotter,
		"--mount", "type=bind,src="+ctlDir+",dst=/ctl,options=rbind:ro", ref, "restart-reader", "/bin/sh", "-c", script)
	ctrOut, _ := ctr.StdoutPipe()
	ctr.Stderr = ctr.Stdout
	if err := ctr.Start(); err != nil {
		t.Fatal(err)
	}
	var ctrLines []string
	var ctrMu sync.Mutex
	ctrDone := make(chan struct{})
	var ctrErr error
	go func() {
		sc := bufio.NewScanner(ctrOut)
		for sc.Scan() {
			ctrMu.Lock()
			ctrLines = append(ctrLines, sc.Text())
			ctrMu.Unlock()
		}
		ctrErr = ctr.Wait()
		close(ctrDone)
	}()
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(ctlDir, "stop"), nil, 0o644)
		select {
		case <-ctrDone:
		case <-time.After(60 * time.Second):
			cancel()
			select {
			case <-ctrDone:
			case <-time.After(10 * time.Second):
				t.Error("ctr cannot be stopped")
			}
		}
	})
	passes := func() int {
		ctrMu.Lock()
		defer ctrMu.Unlock()
		n := 0
		for _, l := range ctrLines {
			if strings.HasPrefix(l, "pass ") {
				n++
			}
		}
		return n
	}
	waitPasses := func(more int) {
		t.Helper()
		target := passes() + more
		for deadline := time.Now().Add(90 * time.Second); passes() < target; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				ctrMu.Lock()
				t.Fatalf("the container is stuck after %d passes:\n%s\n%s", passes(), strings.Join(ctrLines, "\n"), e.daemonLog())
			}
		}
	}
	// Dropping the page cache makes the container's reads reach the
	// daemon again too.
	dropCaches := func() { os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0) }

	waitProgress(10)
	waitPasses(1)

	// waitNewDaemon waits for a daemon other than old to answer and says
	// how long it took.
	waitNewDaemon := func(old int, what string, start time.Time) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := ctl.Status(ctx)
			cancel()
			if err == nil && st.PID != old {
				t.Logf("%s: a new daemon (pid %d) answered %s after", what, st.PID, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no new daemon within 30s:\n%s", what, e.daemonLog())
			}
		}
	}

	t.Run("SIGKILL", func(t *testing.T) {
		old := status().PID
		start := time.Now()
		syscall.Kill(old, syscall.SIGKILL)
		dropCaches()
		waitNewDaemon(old, "SIGKILL", start)
		waitProgress(20)
		dropCaches()
		waitPasses(1)
	})

	t.Run("SIGKILL while answering", func(t *testing.T) {
		fault, hit, release := holdBlobReads()
		e.proxy.SetFault(fault)
		defer e.proxy.SetFault(nil)
		defer release()
		// Fresh chunks must be wanted: drop the daemon's chunk cache's
		// page copies is not enough, so read a file never read yet
		// through a new mount of the same image.
		dir2 := t.TempDir()
		e.mustCLI(t, "mount", ref, dir2)
		defer func() {
			e.cli(context.Background(), "umount", dir2)
			syscall.Unmount(dir2, syscall.MNT_DETACH)
		}()
		got := make(chan []byte, 1)
		go func() {
			b, _ := os.ReadFile(filepath.Join(dir2, "untouched/big"))
			got <- b
		}()
		select {
		case <-hit:
		case <-time.After(30 * time.Second):
			t.Fatal("untouched/big was read without the registry")
		}
		old := status().PID
		start := time.Now()
		syscall.Kill(old, syscall.SIGKILL)
		waitNewDaemon(old, "SIGKILL while answering", start)
		release()
		select {
		case b := <-got:
			if !bytes.Equal(b, ub) {
				t.Fatalf("the read the killed daemon was answering: %d bytes, want %d", len(b), len(ub))
			}
			// Which way the unanswered request came back: resent by the
			// kernel, or failed with EIO (then the read above would
			// have failed: ReadFile retries nothing).
			for _, l := range strings.Split(e.daemonLog(), "\n") {
				if strings.Contains(l, "layer connection taken over") && !strings.Contains(l, "resend 0 ") {
					t.Logf("seen: %s", l[strings.Index(l, "requests="):])
				}
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the read the killed daemon was answering never completed")
		}
		waitProgress(10)
	})

	t.Run("upgrade", func(t *testing.T) {
		before := status()
		old := before.PID
		// A new binary at the same path (a new file, as a package
		// upgrade installs): the daemon and its supervisor must both
		// run it afterwards.
		b, err := os.ReadFile(e.bin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.bin+".new", b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(e.bin+".new", e.bin); err != nil {
			t.Fatal(err)
		}
		// A read in the daemon's hands when it is asked to hand over
		// (its registry read held at the proxy): the daemon answers it
		// before it goes.
		fault, hit, release := holdBlobReads()
		e.proxy.SetFault(fault)
		defer e.proxy.SetFault(nil)
		defer release()
		got := make(chan []byte, 1)
		go func() {
			b, _ := os.ReadFile(filepath.Join(dir, "untouched/second"))
			got <- b
		}()
		select {
		case <-hit:
		case <-time.After(30 * time.Second):
			t.Fatal("untouched/second was read without the registry")
		}
		start := time.Now()
		upgraded := make(chan string, 1)
		go func() {
			out, err := e.cli(context.Background(), "daemon", "--upgrade", "--socket", e.control)
			if err != nil {
				out += err.Error()
			}
			upgraded <- out
		}()
		time.Sleep(300 * time.Millisecond)
		release()
		select {
		case b := <-got:
			if !bytes.Equal(b, ub2) {
				t.Fatalf("a read in flight during the handover: %d bytes, want %d", len(b), len(ub2))
			}
		case <-time.After(60 * time.Second):
			t.Fatal("a read in flight during the handover never completed")
		}
		if out := <-upgraded; !strings.Contains(out, "handed over") {
			t.Errorf("strata daemon --upgrade said:\n%s", out)
		}
		waitNewDaemon(old, "upgrade", start)
		after := status()
		if after.Supervisor != before.Supervisor {
			t.Errorf("the supervisor changed from pid %d to %d: it should exec itself", before.Supervisor, after.Supervisor)
		}
		for _, pid := range []int{after.PID, after.Supervisor} {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != e.bin {
				t.Errorf("pid %d runs %q after the upgrade, want the new %s", pid, exe, e.bin)
			}
		}
		dropCaches()
		waitProgress(20)
		waitPasses(1)
	})

	t.Run("writable mount", func(t *testing.T) {
		fmt.Fprintln(wf, "after")
		if err := wf.Sync(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(rw, "log.txt"))
		if err != nil || string(b) != "before\nafter\n" {
			t.Fatalf("a file written across the restarts reads %q, %v", b, err)
		}
		if n := strings.Count(mountTable(t), " "+rw+" "); n != 1 {
			t.Fatalf("%d mounts at the writable mount's directory, want its one overlay", n)
		}
		if diff := e.mustCLI(t, "diff", rw); !strings.Contains(diff, "log.txt") {
			t.Errorf("strata diff does not show the file written:\n%s", diff)
		}
	})

	os.WriteFile(filepath.Join(work, "stop"), nil, 0o644)
	os.WriteFile(filepath.Join(ctlDir, "stop"), nil, 0o644)
	select {
	case <-readerDone:
	case <-time.After(60 * time.Second):
		t.Fatal("the reader did not stop")
	}
	var res readerResult
	if err := json.Unmarshal(readerOut.Bytes(), &res); err != nil {
		t.Fatalf("reader output: %v\n%s", err, readerOut.String())
	}
	t.Logf("reader: %d reads, worst stall %s", res.Reads, res.MaxStall.Round(time.Millisecond))
	if len(res.Errors) > 0 {
		t.Errorf("the reader saw %d failed reads across the restarts: %v", len(res.Errors), res.Errors[:min(len(res.Errors), 10)])
	}
	select {
	case <-ctrDone:
		err := ctrErr
		ctrMu.Lock()
		last := ctrLines[max(0, len(ctrLines)-3):]
		ctrMu.Unlock()
		if err != nil || !slices.ContainsFunc(last, func(l string) bool { return strings.HasPrefix(l, "done ") }) {
			t.Errorf("the container: %v, last lines %q", err, last)
		} else {
			t.Logf("the container: %s", last[len(last)-1])
		}
	case <-time.After(90 * time.Second):
		t.Error("the container did not stop")
	}
}

// mountTable is /proc/self/mounts.
func mountTable(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"strata": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// The CLI scripts run twice: against distribution's docker-registry and
// against go-containerregistry's in-process registry.
func TestScriptsDistribution(t *testing.T) { runScripts(t, "distribution") }
func TestScriptsInProcess(t *testing.T)    { runScripts(t, "inprocess") }

func runScripts(t *testing.T, kind string) {
	if os.Geteuid() != 0 {
		t.Skip("CLI scripts mount FUSE and overlayfs: run as root (make test does)")
	}
	// testscript removes its go-test-script* directory only once every
	// script has run, so never under -run: keep it in one of ours. (Not
	// t.TempDir: the scripts' paths must stay short for unix sockets.)
	tmp, err := os.MkdirTemp("", "strata-scripts-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("GOTMPDIR", tmp)
	host := startRegistry(t, kind)
	refs := pushImages(t, host)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			return setupScript(env, host, refs)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"killdaemon": killDaemon,
			"stopdaemon": stopDaemonCmd,
			"mounts":     countMounts,
			"fusefds":    countFuseFDs,
			"mounttype":  checkMountType,
		},
	})
}

func startRegistry(t *testing.T, kind string) string {
	if kind == "inprocess" {
		srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(nilLogger())))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	if err := registry.EnsureInstalled(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return reg.Host()
}

// pushImages pushes the standard fixture in eStargz and gzip form, its
// first layer alone as a one-layer image, and the busybox image (a static
// shell, for strata run) as eStargz.
func pushImages(t *testing.T, host string) map[string]string {
	ctx := context.Background()
	refs := map[string]string{}
	for name, form := range map[string]fixture.Form{"ESTARGZ": fixture.FormEStargz, "GZIP": fixture.FormGzip} {
		img, err := fixture.Build(ctx, fixture.Standard(), form, fixture.WithTempDir(t.TempDir()))
		if err != nil {
			t.Fatal(err)
		}
		ref := host + "/standard:" + strings.ToLower(name)
		if _, err := fixture.Push(ctx, img, ref); err != nil {
			t.Fatal(err)
		}
		refs[name] = ref
	}
	one, err := fixture.Build(ctx, fixture.Standard()[:1], fixture.FormEStargz, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	refs["ONELAYER"] = host + "/one-layer:estargz"
	if _, err := fixture.Push(ctx, one, refs["ONELAYER"]); err != nil {
		t.Fatal(err)
	}
	busybox, err := fixture.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Build(ctx, busybox, fixture.FormEStargz, fixture.WithTempDir(t.TempDir()), fixture.WithConfig(fixture.BusyboxConfig()))
	if err != nil {
		t.Fatal(err)
	}
	refs["BUSYBOX"] = host + "/busybox:estargz"
	if _, err := fixture.Push(ctx, img, refs["BUSYBOX"]); err != nil {
		t.Fatal(err)
	}
	return refs
}

func setupScript(env *testscript.Env, host string, refs map[string]string) error {
	sockDir, err := os.MkdirTemp("", "strata-cli-") // unix socket paths must stay short
	if err != nil {
		return err
	}
	root := filepath.Join(env.WorkDir, "state")
	env.Setenv("REGISTRY", host)
	for k, v := range refs {
		env.Setenv(k, v)
	}
	env.Setenv("STRATA_ROOT", root)
	env.Setenv("STRATA_SOCKET", filepath.Join(sockDir, "s.sock"))
	env.Defer(func() {
		stopDaemon(filepath.Join(sockDir, "s.sock"))
		// Whatever daemon the socket's status did not name (it did not
		// answer, or it lost a race to start) goes too.
		killDaemonsOf(filepath.Join(sockDir, "s.sock"))
		kmount.ClearStale(env.WorkDir, nil)
		os.RemoveAll(sockDir)
	})
	return nil
}

// killDaemonsOf ends every process started as "strata daemon --socket
// socket …" (supervisors too): SIGTERM, then SIGKILL after 10 s.
func killDaemonsOf(socket string) {
	find := func() []int {
		var pids []int
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
			for i := 1; i+1 < len(args); i++ {
				if args[i] == "daemon" && slices.Contains(args[i+1:], "--socket") && slices.Index(args, socket) > i {
					pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
					pids = append(pids, pid)
					break
				}
			}
		}
		return pids
	}
	for i, sig := 0, syscall.SIGTERM; i < 200; i++ {
		pids := find()
		if len(pids) == 0 {
			return
		}
		if i == 100 {
			sig = syscall.SIGKILL
		}
		if i == 0 || i == 100 {
			for _, pid := range pids {
				syscall.Kill(pid, sig)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopDaemon stops the daemon serving on socket, if any, and waits for it.
// stopDaemon sends the daemon SIGTERM and waits (10 s at most) for it
// and its supervisor to exit; it reports a process left.
func stopDaemon(socket string) error {
	st, err := daemon.NewClient(socket).Status(context.Background())
	if err != nil {
		return nil
	}
	syscall.Kill(st.PID, syscall.SIGTERM)
	for _, pid := range []int{st.PID, st.Supervisor} {
		for i := 0; pid > 0 && syscall.Kill(pid, 0) == nil; i++ {
			if i == 100 {
				return fmt.Errorf("pid %d still alive 10s after the daemon's SIGTERM", pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// killdaemon SIGKILLs the daemon and its supervisor, as a crash of both
// would, and waits until they are gone: the mounts stay behind, dead.
// "killdaemon -worker" kills the daemon alone: its supervisor starts it
// again, and it takes the mounts over. "killdaemon -supervisor" kills the
// supervisor alone: the daemon serves on, with nothing to keep its
// connections.
func killDaemon(ts *testscript.TestScript, neg bool, args []string) {
	// -nowait: the worker's kill returns at once, while the supervisor
	// starts it again.
	noWait := len(args) == 2 && args[0] == "-worker" && args[1] == "-nowait"
	if noWait {
		args = args[:1]
	}
	workerOnly := len(args) == 1 && args[0] == "-worker"
	supervisorOnly := len(args) == 1 && args[0] == "-supervisor"
	if neg || (len(args) != 0 && !workerOnly && !supervisorOnly) {
		ts.Fatalf("usage: killdaemon [-worker [-nowait]|-supervisor]")
	}
	st, err := daemon.NewClient(ts.Getenv("STRATA_SOCKET")).Status(context.Background())
	if err != nil {
		ts.Fatalf("no daemon to kill: %v", err)
	}
	victims := []int{st.PID}
	if !workerOnly {
		if st.Supervisor == 0 {
			ts.Fatalf("the daemon runs without its supervisor")
		}
		victims = []int{st.Supervisor, st.PID}
	}
	if supervisorOnly {
		victims = []int{st.Supervisor}
	}
	for _, pid := range victims {
		ts.Check(syscall.Kill(pid, syscall.SIGKILL))
	}
	for _, pid := range victims {
		for i := 0; ; i++ {
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
			if i == 100 {
				ts.Fatalf("pid %d still alive", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ts.Logf("killed pids %v", victims)
	if workerOnly && !noWait {
		for i := 0; ; i++ {
			if next, err := daemon.NewClient(ts.Getenv("STRATA_SOCKET")).Status(context.Background()); err == nil && next.PID != st.PID {
				ts.Logf("daemon back as pid %d", next.PID)
				return
			}
			if i == 100 {
				ts.Fatalf("no daemon back 10s after the kill")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// stopdaemon sends SIGTERM, as systemd would, and waits for the exit.
func stopDaemonCmd(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: stopdaemon")
	}
	socket := ts.Getenv("STRATA_SOCKET")
	if _, err := daemon.NewClient(socket).Status(context.Background()); err != nil {
		ts.Fatalf("no daemon to stop: %v", err)
	}
	ts.Check(stopDaemon(socket))
	if _, err := daemon.NewClient(socket).Status(context.Background()); err == nil {
		ts.Fatalf("daemon still answers after SIGTERM")
	}
}

// fusefds N checks that the daemon and its supervisor together hold
// exactly N descriptors of /dev/fuse (FUSE connections): one each per
// layer mounted, none once everything is unmounted.
func countFuseFDs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: fusefds N")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	st, err := daemon.NewClient(ts.Getenv("STRATA_SOCKET")).Status(context.Background())
	if err != nil {
		ts.Fatalf("no daemon: %v", err)
	}
	got := 0
	for _, pid := range []int{st.PID, st.Supervisor} {
		if pid == 0 {
			continue
		}
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		ts.Check(err)
		for _, e := range ents {
			if target, _ := os.Readlink(filepath.Join(dir, e.Name())); target == "/dev/fuse" {
				got++
			}
		}
	}
	if got != want {
		ts.Fatalf("daemon and supervisor hold %d /dev/fuse descriptors, want %d", got, want)
	}
}

// mounttype DIR TYPE checks the type of the filesystem mounted last at
// DIR: overlay for an image of layers merged, fuse.strata for a one-layer
// image bound from its layer's mount.
func checkMountType(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: mounttype DIR TYPE")
	}
	if got := kmount.FSType(ts.MkAbs(args[0])); got != args[1] {
		ts.Fatalf("%s is mounted as %q, want %q", args[0], got, args[1])
	}
}

// mounts N checks that exactly N mounts exist at or below the work
// directory (image overlays and layer FUSE mounts alike).
func countMounts(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mounts N")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	all, err := kmount.Under(ts.Getenv("WORK"))
	ts.Check(err)
	work := ts.Getenv("WORK")
	var got []string
	for _, m := range all {
		if m.Target == work || strings.HasPrefix(m.Target, work+"/") {
			got = append(got, m.FSType+" "+m.Target)
		}
	}
	if len(got) != want {
		ts.Fatalf("%d mounts under $WORK, want %d:\n%s", len(got), want, strings.Join(got, "\n"))
	}
}

package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newRun is the Options of a test run of args on a fresh overlay.
func newRun(t *testing.T, rt string, args ...string) (Options, overlay) {
	t.Helper()
	requireRoot(t)
	ov := mountOverlay(t, makeLower(t))
	return Options{Rootfs: ov.merged, Args: args, Config: imageConfig(), Runtime: rt}, ov
}

// eachRuntime runs f under runc and under crun.
func eachRuntime(t *testing.T, f func(t *testing.T, rt string)) {
	requireRoot(t)
	for _, rt := range runtimes(t) {
		t.Run(runtimeName(rt), func(t *testing.T) { f(t, rt) })
	}
}

func TestConfigDefaults(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "sh", "-c", `id -u; id -g; id -G; pwd; echo "$FOO $BAR $HOME $HOSTNAME $PATH"; cat /etc/hostname; echo "TERM=$TERM"`)
		o.Hostname = "steph"
		code, out, errOut, err := run(t, o)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; stderr %q", code, err, errOut)
		}
		want := "1000\n1000\n1000 50\n/work\nfrom-image image-bar /home/builder steph /usr/local/bin:/usr/bin:/bin\nsteph\nTERM=\n"
		if out != want {
			t.Errorf("output %q, want %q", out, want)
		}
		ov.expectChanges(t)
	})
}

func TestOverrides(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		for _, tc := range []struct {
			name, user, workdir string
			env                 []string
			want                string
		}{
			{"root", "root", "/tmp", []string{"FOO=over"}, "0 0 0 /tmp over image-bar /root"},
			{"uid", "0", "", nil, "0 0 0 /work from-image image-bar /root"},
			{"user:group", "builder:staff", "/", []string{"BAR=b", "NEW=n"}, "1000 50 50 / from-image b /home/builder"},
			{"numeric without entry", "1234:5678", "/", nil, "1234 5678 5678 / from-image image-bar /"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				o, ov := newRun(t, rt, "sh", "-c", `echo $(id -u) $(id -g) $(id -G) $(pwd) $FOO $BAR $HOME`)
				o.User, o.WorkDir, o.Env = tc.user, tc.workdir, tc.env
				code, out, errOut, err := run(t, o)
				if err != nil || code != 0 {
					t.Fatalf("exit %d, %v; stderr %q", code, err, errOut)
				}
				if strings.TrimSpace(out) != tc.want {
					t.Errorf("output %q, want %q", out, tc.want)
				}
				ov.expectChanges(t)
			})
		}
	})
}

func TestEntrypointCmd(t *testing.T) {
	o, ov := newRun(t, "")
	code, out, _, err := run(t, o)
	if err != nil || code != 0 || out != "from-cmd\n" {
		t.Fatalf("Cmd: exit %d, %v, output %q", code, err, out)
	}
	o.Config.Entrypoint = []string{"echo", "entry"}
	if code, out, _, err = run(t, o); err != nil || code != 0 || out != "entry echo from-cmd\n" {
		t.Fatalf("Entrypoint+Cmd: exit %d, %v, output %q", code, err, out)
	}
	o.Config.Entrypoint, o.Config.Cmd = nil, nil
	if _, _, _, err = run(t, o); !errors.Is(err, ErrNoCommand) {
		t.Fatalf("no command: %v, want ErrNoCommand", err)
	}
	ov.expectChanges(t)
}

func TestExitStatus(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		for _, tc := range []struct {
			script string
			want   int
		}{{"exit 0", 0}, {"exit 3", 3}, {"false", 1}} {
			o, ov := newRun(t, rt, "sh", "-c", tc.script)
			code, _, errOut, err := run(t, o)
			if err != nil || code != tc.want {
				t.Errorf("%s: exit %d, %v, want %d; stderr %q", tc.script, code, err, tc.want, errOut)
			}
			ov.expectChanges(t)
		}
	})
}

// TestSignals: a signal on Options.Signals reaches the command, which may
// handle it (trap INT, exit 5) or die of it (SIGKILL: 128+9); a command
// that goes on after the first ^C (one running as the container's first
// process with no handler never sees it) is killed by the second.
func TestSignals(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		for _, tc := range []struct {
			name, trap string
			sigs       []syscall.Signal
			want       int
		}{
			{"INT trapped", "exit 5", []syscall.Signal{syscall.SIGINT}, 5},
			{"KILL", "exit 5", []syscall.Signal{syscall.SIGKILL}, 137},
			{"second INT kills", "echo handled", []syscall.Signal{syscall.SIGINT, syscall.SIGINT}, 137},
		} {
			t.Run(tc.name, func(t *testing.T) {
				o, ov := newRun(t, rt, "sh", "-c", `trap "`+tc.trap+`" INT; echo ready; while true; do sleep 0.1; done`)
				signals := make(chan os.Signal, 1)
				var out buffer
				o.Signals, o.Stdout = signals, &out
				go func() {
					out.waitFor(t, "ready")
					for i, sig := range tc.sigs {
						if i > 0 {
							out.waitFor(t, "handled") // the first one reached it
						}
						signals <- sig
					}
				}()
				code, _, errOut, err := run(t, o)
				if err != nil || code != tc.want {
					t.Errorf("exit %d, %v, want %d; stderr %q", code, err, tc.want, errOut)
				}
				ov.expectChanges(t)
			})
		}
	})
}

func TestStdin(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "cat")
		o.Stdin = strings.NewReader("hi\nthere\n")
		code, out, _, err := run(t, o)
		if err != nil || code != 0 || out != "hi\nthere\n" {
			t.Errorf("exit %d, %v, output %q", code, err, out)
		}
		ov.expectChanges(t)
	})
}

func TestTTY(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "sh", "-c", `tty && [ -t 0 ] && [ -t 1 ] && echo "TERM=$TERM"`)
		o.TTY = true
		code, out, _, err := run(t, o)
		if err != nil || code != 0 || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "TERM=xterm") {
			t.Errorf("tty: exit %d, %v, output %q", code, err, out)
		}
		o.TTY = false
		o.Args = []string{"sh", "-c", `[ -t 0 ] || [ -t 1 ]`}
		if code, out, _, err = run(t, o); err != nil || code != 1 {
			t.Errorf("no tty: exit %d (want 1), %v, output %q", code, err, out)
		}
		ov.expectChanges(t)
	})
}

func TestTTYStdin(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "sh", "-c", `read line; echo "got $line"; exit 4`)
		o.TTY = true
		o.Stdin = strings.NewReader("hello\n")
		code, out, _, err := run(t, o)
		if err != nil || code != 4 || !strings.Contains(out, "got hello") {
			t.Errorf("exit %d (want 4), %v, output %q", code, err, out)
		}
		ov.expectChanges(t)
	})
}

func TestNetworkNone(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "sh", "-c", `ls /sys/class/net; cat /etc/resolv.conf; grep -c localhost /etc/hosts`)
		o.Network = "none"
		code, out, errOut, err := run(t, o)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; stderr %q", code, err, errOut)
		}
		lines := strings.Split(out, "\n")
		if lines[0] != "lo" || strings.Contains(out, "nameserver") || lines[len(lines)-2] != "2" {
			t.Errorf("output %q: want only lo, no name server, localhost in hosts", out)
		}
		ov.expectChanges(t)
	})
}

func TestNetworkHost(t *testing.T) {
	o, ov := newRun(t, "", "ls", "/sys/class/net")
	code, out, _, err := run(t, o)
	if err != nil || code != 0 || strings.TrimSpace(out) == "lo" {
		t.Errorf("exit %d, %v, interfaces %q: want the host's", code, err, out)
	}
	ov.expectChanges(t)
}

func TestMounts(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		host := t.TempDir()
		writeFile(t, filepath.Join(host, "in.txt"), "from host\n")
		hostFile := filepath.Join(t.TempDir(), "single")
		writeFile(t, hostFile, "single file\n")
		var mounts []Mount
		for _, s := range []string{
			"type=bind,source=" + host + ",target=/data/in",
			"type=bind,src=" + host + ",dst=/data/ro,readonly",
			"src=" + hostFile + ",target=/opt/single.txt",
			"type=tmpfs,target=/scratch,tmpfs-size=1m",
			"type=tmpfs,target=/private,tmpfs-mode=0700",
			// given before the tmpfs it lies in: mounted after it,
			// parents first, as BuildKit and Docker order them
			"src=" + hostFile + ",target=/nested/single.txt,readonly",
			"type=tmpfs,target=/nested",
		} {
			m, err := ParseMount(s)
			must(t, err)
			mounts = append(mounts, m)
		}
		o, ov := newRun(t, rt, "sh", "-c", `set -e
cat /data/in/in.txt /opt/single.txt
cmp /opt/single.txt /nested/single.txt
echo written > /data/in/out.txt
if touch /data/ro/x 2>/dev/null; then echo ro-writable; fi
grep " /scratch tmpfs" /proc/mounts | grep -q size=1024k
# a tmpfs has the mode asked for (1777 by default), under runc too
test "$(stat -c %a /scratch)" = 1777 || { echo "/scratch: $(stat -c %a /scratch)" >&2; exit 1; }
test "$(stat -c %a /private)" = 700 || { echo "/private: $(stat -c %a /private)" >&2; exit 1; }
echo s > /scratch/s
echo kept > /work/kept`)
		o.User, o.Mounts = "root", mounts
		code, out, errOut, err := run(t, o)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; stdout %q stderr %q", code, err, out, errOut)
		}
		if out != "from host\nsingle file\n" {
			t.Errorf("output %q", out)
		}
		if b, err := os.ReadFile(filepath.Join(host, "out.txt")); err != nil || string(b) != "written\n" {
			t.Errorf("write through the bind mount: %q, %v", b, err)
		}
		ov.expectChanges(t, "work", "work/kept")
	})
}

// TestImageFilesBoundOver: an image's own /etc/hosts is mounted over, not
// replaced, and comes back unchanged.
func TestImageFilesBoundOver(t *testing.T) {
	requireRoot(t)
	lower := makeLower(t)
	writeFile(t, filepath.Join(lower, "etc/hosts"), "10.0.0.1 image-host\n")
	ov := mountOverlay(t, lower)
	o := Options{Rootfs: ov.merged, Args: []string{"cat", "/etc/hosts"}, Config: imageConfig(), Hostname: "hn"}
	code, out, _, err := run(t, o)
	if err != nil || code != 0 || !strings.Contains(out, "hn") || strings.Contains(out, "image-host") {
		t.Errorf("exit %d, %v, /etc/hosts %q", code, err, out)
	}
	ov.expectChanges(t)
	if b, _ := os.ReadFile(filepath.Join(ov.merged, "etc/hosts")); string(b) != "10.0.0.1 image-host\n" {
		t.Errorf("image's /etc/hosts now %q", b)
	}
}

// TestMissingWorkDir: a working directory the image lacks is made, root's
// and 0755 as BuildKit makes it (buildah and docker make it too), and stays
// in the layer; one inside a mount is not made in the layer (the runtime
// makes it in the mount: gone with a tmpfs).
func TestMissingWorkDir(t *testing.T) {
	o, ov := newRun(t, "", "pwd")
	o.WorkDir = "/new/dir"
	code, out, _, err := run(t, o)
	if err != nil || code != 0 || out != "/new/dir\n" {
		t.Errorf("exit %d, %v, output %q", code, err, out)
	}
	ov.expectChanges(t, "new", "new/dir")
	for _, d := range []string{"new", "new/dir"} {
		st, err := os.Stat(filepath.Join(ov.merged, d))
		if err != nil || st.Mode() != os.ModeDir|0o755 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("/%s: %v, %v", d, st.Mode(), err)
		}
	}
	// The image's own WorkingDir alike.
	o.WorkDir, o.Config.WorkingDir = "", "/from/config"
	if code, out, _, err = run(t, o); err != nil || code != 0 || out != "/from/config\n" {
		t.Errorf("exit %d, %v, output %q", code, err, out)
	}
	ov.expectChanges(t, "from", "from/config", "new", "new/dir")
	// Inside a mount, it is made in the mount, not in the layer.
	m, err := ParseMount("type=tmpfs,target=/scratch")
	must(t, err)
	o.Mounts, o.WorkDir = []Mount{m}, "/scratch/sub"
	if code, out, _, err = run(t, o); err != nil || code != 0 || out != "/scratch/sub\n" {
		t.Errorf("in a mount: exit %d, %v, output %q", code, err, out)
	}
	ov.expectChanges(t, "from", "from/config", "new", "new/dir")
	// A file where it would be: a clear error.
	o.Mounts, o.WorkDir = nil, "/etc/passwd"
	if _, _, _, err = run(t, o); err == nil || !strings.Contains(err.Error(), "working directory /etc/passwd: the image has a file there") {
		t.Errorf("working directory on a file: %v", err)
	}
}

// TestCommandInMount: a command found only through a mount (tools bound
// from elsewhere, a FROM scratch step's) is not refused before the
// container starts; one found nowhere still is.
func TestCommandInMount(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		tools := t.TempDir()
		b, err := os.ReadFile(busybox)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(tools, "busybox"), b, 0o755))
		m, err := ParseMount("type=bind,src=" + tools + ",dst=/tools,readonly")
		must(t, err)
		for _, c := range []struct {
			name string
			args []string
			env  []string
		}{
			{"absolute", []string{"/tools/busybox", "echo", "hi"}, nil},
			{"relative to the working directory", []string{"../tools/busybox", "echo", "hi"}, nil},
			{"through PATH", []string{"busybox", "echo", "hi"}, []string{"PATH=/tools"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				o, ov := newRun(t, rt, c.args...)
				o.Mounts, o.Env = []Mount{m}, c.env
				code, out, errOut, err := run(t, o)
				if err != nil || code != 0 || out != "hi\n" {
					t.Errorf("exit %d, %v, output %q, stderr %q", code, err, out, errOut)
				}
				ov.expectChanges(t)
			})
		}
		// The runtime says it is missing.
		o, _ := newRun(t, rt, "/tools/none")
		o.Mounts = []Mount{m}
		if code, _, errOut, err := run(t, o); code == 0 || !strings.Contains(fmt.Sprint(err)+errOut, "/tools/none") {
			t.Errorf("a command the mount lacks: exit %d, %v, stderr %q", code, err, errOut)
		}
		o, _ = newRun(t, rt, "/elsewhere/busybox")
		o.Mounts = []Mount{m}
		if _, _, _, err := run(t, o); !errors.Is(err, ErrCommandNotFound) {
			t.Errorf("a command outside the image and the mounts: %v", err)
		}
	})
}

// TestImageEnvWithoutValue: an image Env entry without "=" is the variable
// set empty, as BuildKit reads it (runtimes refuse the entry as it is), and
// one without a name is left out.
func TestImageEnvWithoutValue(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, _ := newRun(t, rt, "sh", "-c", `env | grep -E '^(FOO|A)=' | sort; echo "${FOO-unset}."`)
		o.Config.Env = append(o.Config.Env, "FOO", "=x", "A=1")
		code, out, errOut, err := run(t, o)
		if err != nil || code != 0 || out != "A=1\nFOO=\n.\n" {
			t.Errorf("exit %d, %v, output %q, stderr %q", code, err, out, errOut)
		}
	})
}

func TestNotFound(t *testing.T) {
	o, ov := newRun(t, "", "no-such-command", "arg")
	_, _, _, err := run(t, o)
	if !errors.Is(err, ErrCommandNotFound) || !strings.Contains(err.Error(), "no-such-command") ||
		!strings.Contains(err.Error(), "PATH=/usr/local/bin:/usr/bin:/bin") {
		t.Errorf("missing command: %v", err)
	}
	o.Args = []string{"/bin/nope"}
	if _, _, _, err = run(t, o); !errors.Is(err, ErrCommandNotFound) {
		t.Errorf("missing path: %v", err)
	}
	o.Args, o.User = []string{"true"}, "nobody"
	if _, _, _, err = run(t, o); !errors.Is(err, ErrUserNotFound) || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("missing user: %v", err)
	}
	o.User = "builder:wheel"
	if _, _, _, err = run(t, o); !errors.Is(err, ErrGroupNotFound) || !strings.Contains(err.Error(), "wheel") {
		t.Errorf("missing group: %v", err)
	}
	o.User, o.Runtime = "", "no-such-runtime"
	if _, _, _, err = run(t, o); !errors.Is(err, ErrNoRuntime) || !strings.Contains(err.Error(), "apt-get install runc") {
		t.Errorf("missing runtime: %v", err)
	}
	ov.expectChanges(t)
}

// TestAccumulate: two runs on one overlay; the second sees the first's
// files and the upper dir holds both, and nothing else.
func TestAccumulate(t *testing.T) {
	o, ov := newRun(t, "", "sh", "-c", "echo one > /work/one")
	if code, _, _, err := run(t, o); err != nil || code != 0 {
		t.Fatalf("first run: exit %d, %v", code, err)
	}
	o.Args = []string{"sh", "-c", "cat /work/one; mkdir -p /work/sub; echo two > /work/sub/two"}
	code, out, _, err := run(t, o)
	if err != nil || code != 0 || out != "one\n" {
		t.Fatalf("second run: exit %d, %v, output %q", code, err, out)
	}
	ov.expectChanges(t, "work", "work/one", "work/sub", "work/sub/two")
}

// TestCancel: cancelling ctx kills the command; Run returns promptly with
// the context's error, the container and bundle gone, the rootfs clean.
func TestCancel(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "sh", "-c", "echo ready; sleep 100")
		var out buffer
		o.Stdout, o.StateDir = &out, t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			out.waitFor(t, "ready")
			cancel()
		}()
		start := time.Now()
		code, err := Run(ctx, o)
		if !errors.Is(err, context.Canceled) || code != 137 {
			t.Errorf("exit %d, %v; want 137 and context.Canceled", code, err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("Run took %v after cancel", d)
		}
		checkStateDirEmpty(t, o.StateDir)
		ov.expectChanges(t)
	})
}

// TestCapAddAll: --cap-add ALL gives the command every capability this
// process may give, and runs where the host's bounding set lacks some.
func TestCapAddAll(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		o, ov := newRun(t, rt, "grep", "^CapEff:", "/proc/self/status")
		o.User, o.CapAdd = "root", []string{"ALL"}
		code, out, errOut, err := run(t, o)
		if err != nil || code != 0 {
			t.Fatalf("exit %d, %v; stderr %q", code, err, errOut)
		}
		want := fmt.Sprintf("%016x", boundingSet()&(1<<(lastCap()+1)-1))
		if got := strings.TrimSpace(strings.TrimPrefix(out, "CapEff:")); got != want {
			t.Errorf("CapEff %s, want %s", got, want)
		}
		ov.expectChanges(t)
	})
}

// TestRuntimeDirsNotThroughSymlinks: an image whose /dev (or /proc, /sys)
// is a symlink to a host directory is refused before a runtime sees it:
// runc would make /dev's links, crun its device nodes, through the link
// on the host. Nothing is made there, nor in the layer.
func TestRuntimeDirsNotThroughSymlinks(t *testing.T) {
	eachRuntime(t, func(t *testing.T, rt string) {
		for _, dir := range []string{"dev", "proc", "sys"} {
			t.Run(dir, func(t *testing.T) {
				lower := makeLower(t)
				host := t.TempDir()
				must(t, os.Symlink(host, filepath.Join(lower, dir)))
				ov := mountOverlay(t, lower)
				o := Options{Rootfs: ov.merged, Args: []string{"true"}, Config: imageConfig(), Runtime: rt}
				_, _, _, err := run(t, o)
				if !errors.Is(err, ErrUnsafeRootfs) || !strings.Contains(err.Error(), "/"+dir) || !strings.Contains(err.Error(), host) {
					t.Errorf("/%s a symlink to %s: %v, want ErrUnsafeRootfs naming both", dir, host, err)
				}
				if ents, _ := os.ReadDir(host); len(ents) > 0 {
					t.Errorf("the run made %d entries in the host directory %s that /%s links to", len(ents), host, dir)
				}
				ov.expectChanges(t)
			})
		}
		lower := makeLower(t)
		writeFile(t, filepath.Join(lower, "sys"), "not a directory\n")
		ov := mountOverlay(t, lower)
		o := Options{Rootfs: ov.merged, Args: []string{"true"}, Config: imageConfig(), Runtime: rt}
		if _, _, _, err := run(t, o); !errors.Is(err, ErrUnsafeRootfs) || !strings.Contains(err.Error(), "/sys is not a directory") {
			t.Errorf("/sys a file: %v", err)
		}
		ov.expectChanges(t)
	})
}

// TestKilledRuntimeLeavesNoTargets: a runtime killed while starting the
// container may leave a child that goes on preparing the rootfs; it must
// not make mount targets (or anything) in the layer after the run's
// cleanup. The runtime here is a script that starts such a child and
// kills itself.
func TestKilledRuntimeLeavesNoTargets(t *testing.T) {
	o, ov := newRun(t, "", "true")
	rt := filepath.Join(t.TempDir(), "dying-runtime")
	// The child holds none of the runtime's output: its end waits for
	// nothing of the child's.
	script := `#!/bin/sh
for a; do
	[ "$a" = --version ] && { echo "dying-runtime 1"; exit 0; }
done
case " $* " in
*" run "*)
	( sleep 0.5; mkdir -p '` + ov.merged + `/dev' '` + ov.merged + `/proc'; echo late > '` + ov.merged + `/late' ) </dev/null >/dev/null 2>&1 &
	kill -9 $$
	;;
esac
exit 0
`
	if err := os.WriteFile(rt, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	o.Runtime = rt
	_, _, _, err := run(t, o)
	if err == nil || !strings.Contains(err.Error(), "was killed by SIGKILL") {
		t.Fatalf("run with a runtime that dies: %v, want it said", err)
	}
	// The child would have written by now.
	time.Sleep(time.Second)
	ov.expectChanges(t)
}

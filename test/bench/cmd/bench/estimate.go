package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// tracedWorkloads are those the bytes target is about.
var tracedWorkloads = map[string]bool{"goversion": true, "python": true}

// readEstimate is what a workload reads, from strace on the unpacked
// local copy: distinct regular files opened or executed, and their sizes.
type readEstimate struct {
	Files int
	Bytes int64 // uncompressed
	Total int64 // all regular files in the image, for its compression ratio
	// Paths are the files read, relative to the root, symlinks resolved.
	Paths []string `json:",omitempty"`
	// Compressed is the size of those files' compressed content in the
	// eStargz layers (0 when the TOCs could not be read).
	Compressed int64 `json:",omitempty"`
}

var tracedPath = regexp.MustCompile(`^\d+\s+(?:openat|execve|open)\((?:AT_FDCWD, )?"([^"]+)"`)

// traceReads runs w under strace in root and sums the sizes of the files
// it opened. It overestimates when a program opens a file and reads only
// part of it (Go reads all of its binary's pages it touches, not the file).
func traceReads(ctx context.Context, root string, w workload) (readEstimate, error) {
	var est readEstimate
	if _, err := exec.LookPath("strace"); err != nil {
		if err := run(ctx, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "strace"); err != nil {
			return est, err
		}
	}
	out := filepath.Join(os.TempDir(), fmt.Sprintf("bench-strace-%d", os.Getpid()))
	defer os.Remove(out)
	if len(w.Chroot) == 0 {
		return est, fmt.Errorf("workload %s does not run in a chroot", w.Name)
	}
	args := append([]string{"-f", "-qq", "-z", "-e", "trace=open,openat,execve", "-o", out, "chroot", root}, w.Chroot...)
	if err := run(ctx, "strace", args...); err != nil {
		return est, err
	}
	f, err := os.Open(out)
	if err != nil {
		return est, err
	}
	defer f.Close()
	seen, seenFile := map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := tracedPath.FindStringSubmatch(sc.Text())
		if m == nil || seen[m[1]] {
			continue
		}
		seen[m[1]] = true
		rel, ok := resolveIn(root, m[1])
		if !ok || seenFile[rel] {
			continue // two names of one file are one file read
		}
		seenFile[rel] = true
		fi, err := os.Lstat(filepath.Join(root, rel))
		if err == nil && fi.Mode().IsRegular() {
			est.Files++
			est.Bytes += fi.Size()
			est.Paths = append(est.Paths, rel)
		}
	}
	if err := sc.Err(); err != nil {
		return est, err
	}
	err = filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				est.Total += fi.Size()
			}
		}
		return nil
	})
	return est, err
}

// resolveIn resolves symlinks in p as the chroot at root would, without
// ever leaving root, and returns the path relative to root.
func resolveIn(root, p string) (string, bool) {
	todo := strings.Split(strings.Trim(filepath.Clean("/"+p), "/"), "/")
	var done []string
	for hops := 0; len(todo) > 0; {
		part := todo[0]
		todo = todo[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := append(done, part)
		target, err := os.Readlink(filepath.Join(append([]string{root}, cur...)...))
		if err != nil {
			done = cur
			continue
		}
		if hops++; hops > 40 {
			return "", false
		}
		if strings.HasPrefix(target, "/") {
			done = nil
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return strings.Join(done, "/"), len(done) > 0
}

type machineInfo struct {
	Kernel, CPU, Go, Strata, Skopeo, Umoci, Registry, Stargz string
	Buildah, Runc                                            string `json:",omitempty"`
	Soci                                                     string `json:",omitempty"` // soci-snapshotter's module version (test/bench/soci)
	Cores                                                    int
	MemGiB                                                   int64
}

func machine(ctx context.Context, o options) machineInfo {
	out := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return line
	}
	m := machineInfo{
		Kernel:   out("uname", "-sr"),
		CPU:      strings.TrimSpace(strings.TrimPrefix(out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"), " ")),
		Go:       runtime.Version(),
		Strata:   out("sh", "-c", "cd "+filepath.Dir(o.strata)+" && git rev-parse --short HEAD"),
		Skopeo:   out("skopeo", "--version"),
		Umoci:    out("umoci", "--version"),
		Registry: out("docker-registry", "--version"),
		Stargz:   out("sh", "-c", "grep 'stargz-snapshotter v' "+filepath.Join(filepath.Dir(o.stargz), "..", "test/bench/stargz/go.mod")),
		Soci:     sociModule(filepath.Join(filepath.Dir(o.soci), "..", "test/bench/soci/go.mod")),
		Buildah:  out("buildah", "--version"),
		Runc:     out("runc", "--version"),
		Cores:    runtime.NumCPU(),
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		m.MemGiB = (kb + 1<<19) >> 20
	}
	return m
}

// sociModule is the soci-snapshotter version that test/bench/soci's
// go.mod (at path) requires, e.g. "v0.16.1", or "" without that file.
func sociModule(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/awslabs/soci-snapshotter" {
			return f[1]
		}
	}
	return ""
}

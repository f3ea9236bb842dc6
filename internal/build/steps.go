package build

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/continuity/fs"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
	steprun "github.com/stratafs/strata/internal/run"
)

// run carries out a RUN: the command runs in a writable mount of the
// stage's image, whose changes become the step's layer.
func (b *builder) run(ctx context.Context, st *stageState, c *instructions.RunCommand) error {
	if err := c.Expand(st.expander()); err != nil {
		return err
	}
	args, script, err := runArgs(st, c)
	if err != nil {
		return err
	}
	createdBy := "RUN " + runCommandString(args, st.args, st.config.Config.Env)
	network := "host"
	switch n := instructions.GetNetwork(c); n {
	case instructions.NetworkNone:
		network = "none"
	case instructions.NetworkHost, instructions.NetworkDefault, "":
	default:
		return fmt.Errorf("RUN --network=%s is not supported (none, host, default)", n)
	}
	switch sec := instructions.GetSecurity(c); sec {
	case "", instructions.SecuritySandbox:
	default:
		// BuildKit runs it only with --allow security.insecure; there is
		// no such entitlement here.
		return fmt.Errorf("RUN --security=%s is not supported: strata build runs every step sandboxed", sec)
	}
	plan, err := b.planMounts(ctx, st, c)
	if err != nil {
		return err
	}
	key := b.cacheKey(st, createdBy, append(plan.key, "network="+network, "script="+script)...)
	if b.cached(ctx, st, key) {
		return nil
	}
	st.run = true
	err = b.mount(ctx, st)
	st.run = false
	if err != nil {
		return err
	}
	mounts, err := plan.mounts(st)
	defer plan.done()
	if err != nil {
		return err
	}
	if script != "" {
		m, err := b.scriptMount(script, c.Files[0].Name)
		if err != nil {
			return err
		}
		mounts = append(mounts, m)
	}
	info, err := b.cl.StartRun(ctx, daemon.RunRequest{Dir: st.dir, Args: args})
	if err != nil {
		return err
	}
	unlock, err := steprun.HoldLock(ctx, info.LockFile, nil)
	if err != nil {
		return err
	}
	o := steprun.Options{
		Rootfs: st.dir, Args: args, Config: imageConfig(st.config.Config), Network: network,
		Mounts: mounts, StateDir: info.StateDir, Runtime: b.o.Runtime, Signals: b.o.Signals,
		Stdout: b.o.Stdout, Stderr: b.o.Stderr,
	}
	// Build arguments are in the command's environment, below ENV.
	for _, kv := range st.argEnv() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := lookup(st.config.Config.Env, k); !ok {
			o.Env = append(o.Env, kv)
		}
	}
	o.Env = append(o.Env, plan.env...)
	o.Env = append(o.Env, b.proxyEnv(o.Env, st.config.Config.Env)...)
	var tail *tailBuffer
	if b.o.Quiet {
		tail = &tailBuffer{max: 16 << 10}
		o.Stdout, o.Stderr = tail, tail
	}
	// ctx ends with the build's first SIGINT or SIGTERM: the step is
	// killed then and the build ends, as docker build's first ^C does
	// (a command that is the container's first process ignores a signal
	// it has no handler for, so relaying it alone could leave the build
	// waiting for the step).
	code, err := steprun.Run(ctx, o)
	unlock()
	if err != nil {
		if ctx.Err() != nil {
			return &StepError{Err: fmt.Errorf("%w: the build was interrupted: the step was stopped", context.Cause(ctx))}
		}
		return err
	}
	if code != 0 {
		se := &StepError{ExitCode: code, Err: fmt.Errorf("%w: exit status %d", ErrBuild, code)}
		if tail != nil {
			se.Output = tail.String()
		}
		return se
	}
	b.res.Steps++
	return b.commitStep(ctx, st, createdBy, key)
}

// proxyEnv is what BuildKit gives every RUN without an ARG for it: the
// proxy variables among the build arguments, unless the environment
// already sets them. Like BuildKit it keeps them out of the cache key,
// created_by and the image: a proxy is the builder's, not the image's.
func (b *builder) proxyEnv(envs ...[]string) []string {
	var out []string
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
		"NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"} {
		v, ok := b.o.BuildArgs[k]
		if !ok {
			continue
		}
		set := false
		for _, env := range envs {
			if _, ok := lookup(env, k); ok {
				set = true
			}
		}
		if !set {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// runArgs is the command a RUN runs, as BuildKit's dispatchRun makes it,
// heredocs included; script is the content of a heredoc with a shebang,
// which runs from a file at /dev/pipes/NAME (the shell form's shell
// running it).
func runArgs(st *stageState, c *instructions.RunCommand) (args []string, script string, err error) {
	args = slices.Clone(c.CmdLine)
	if len(c.Files) > 0 {
		if len(args) != 1 || !c.PrependShell {
			return nil, "", fmt.Errorf("a heredoc in a RUN of exec form is not a command: %v", args)
		}
		if parser.MustParseHeredoc(args[0]) != nil {
			data := c.Files[0].Data
			if c.Files[0].Chomp {
				data = parser.ChompHeredocContent(data)
			}
			if strings.HasPrefix(data, "#!") {
				// Run from its file, through the shell as BuildKit
				// runs it (and writes it in the history).
				args, script = []string{path.Join("/dev/pipes", c.Files[0].Name)}, data
			} else {
				args = []string{data}
			}
		} else {
			var sb strings.Builder
			sb.WriteString(args[0])
			for _, f := range c.Files {
				sb.WriteByte('\n')
				sb.WriteString(f.Data)
				sb.WriteString(f.Name)
			}
			args = []string{sb.String()}
		}
	}
	if c.PrependShell {
		sh := slices.Clone(st.config.Config.Shell)
		if len(sh) == 0 {
			sh = []string{"/bin/sh", "-c"}
		}
		args = append(sh, strings.Join(args, " "))
	}
	if len(args) == 0 {
		return nil, "", errors.New("RUN with no command")
	}
	return args, script, nil
}

// runCommandString is a RUN's created_by after "RUN ", as BuildKit writes
// it: "|N K=V ..." for the stage's build arguments, each with the value
// the command gets (an ENV of the same name wins), then the command.
func runCommandString(args []string, buildArgs []instructions.KeyValuePairOptional, cfgEnv []string) string {
	var env []string
	idx := map[string]int{}
	for _, a := range buildArgs {
		v, ok := lookup(cfgEnv, a.Key)
		if !ok {
			v = a.ValueString()
		}
		kv := a.Key + "=" + v
		if i, ok := idx[a.Key]; ok {
			env[i] = kv
			continue
		}
		idx[a.Key] = len(env)
		env = append(env, kv)
	}
	if len(env) > 0 {
		env = append([]string{fmt.Sprintf("|%d", len(env))}, env...)
	}
	return strings.Join(append(env, args...), " ")
}

// scriptMount puts a heredoc script in a file of the build's directory,
// bound read-only at /dev/pipes/NAME for the run.
func (b *builder) scriptMount(script, name string) (steprun.Mount, error) {
	b.n++
	dir := filepath.Join(b.work, "pipes-"+strconv.Itoa(b.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return steprun.Mount{}, err
	}
	f := filepath.Join(dir, "script")
	if err := os.WriteFile(f, []byte(script), 0o755); err != nil {
		return steprun.Mount{}, err
	}
	return steprun.ParseMount("type=bind,source=" + f + ",target=" + path.Join("/dev/pipes", name) + ",readonly")
}

// mountPlan is what a RUN's --mount flags ask for: what goes in the cache
// key (never a secret's value), and the mounts, made once the stage has
// its writable mount.
type mountPlan struct {
	key  []string
	env  []string // secrets given as environment variables
	make []func(st *stageState) (steprun.Mount, error)
	// after holds what the step's mounts release when it has run (a
	// cache mount's step lock).
	after []func()
}

// done releases what the step's mounts held for it.
func (p *mountPlan) done() {
	for _, f := range p.after {
		f()
	}
	p.after = nil
}

func (p *mountPlan) mounts(st *stageState) ([]steprun.Mount, error) {
	var out []steprun.Mount
	for _, f := range p.make {
		m, err := f(st)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// planMounts reads a RUN's --mount flags.
func (b *builder) planMounts(ctx context.Context, st *stageState, c *instructions.RunCommand) (*mountPlan, error) {
	p := &mountPlan{}
	for _, m := range instructions.GetMounts(c) {
		target := m.Target
		if target != "" && !path.IsAbs(target) {
			target = path.Join(orRoot(st.config.Config.WorkingDir), target)
		}
		switch m.Type {
		case instructions.MountTypeSecret:
			// BuildKit's names: source= is the id too, and the id's base
			// the default file name.
			id := cmp.Or(m.Source, m.CacheID)
			if id == "" && target != "" {
				id = path.Base(target)
			}
			if id == "" {
				return nil, errors.New("RUN --mount=type=secret needs id= or target=")
			}
			src, ok := b.o.Secrets[id]
			if !ok {
				if m.Required {
					return nil, fmt.Errorf("secret %q is required but was not given (--secret id=%s,src=FILE)", id, id)
				}
				if m.Env != nil {
					// Set, empty, as BuildKit sets it.
					envName := cmp.Or(*m.Env, id)
					p.env = append(p.env, envName+"=")
					p.key = append(p.key, fmt.Sprintf("secret %s absent env=%s", id, envName))
				}
				continue
			}
			mode, uid, gid := ownership(m, 0o400)
			var envName string
			if m.Env != nil {
				v, err := src.read(id)
				if err != nil {
					return nil, err
				}
				envName = *m.Env
				if envName == "" {
					envName = id
				}
				p.env = append(p.env, envName+"="+string(v))
			}
			if target == "" && m.Env == nil {
				target = "/run/secrets/" + path.Base(id)
			}
			// The key says which secret and how the step sees it (where,
			// in which variable, with which mode and owner), never what it
			// holds: a new value of a secret does not invalidate the
			// cache, as in BuildKit.
			p.key = append(p.key, fmt.Sprintf("secret %s target=%s env=%s mode=%o uid=%d gid=%d", id, target, envName, mode, uid, gid))
			if target == "" {
				continue // in the environment only
			}
			p.make = append(p.make, func(*stageState) (steprun.Mount, error) {
				file, err := b.secretFile(id, src, os.FileMode(mode)&os.ModePerm, int(uid), int(gid))
				if err != nil {
					return steprun.Mount{}, err
				}
				return steprun.ParseMount("type=bind,source=" + file + ",target=" + target + ",readonly")
			})
		case instructions.MountTypeCache:
			if target == "" {
				return nil, errors.New("RUN --mount=type=cache needs target=")
			}
			// The id is the target as written, cleaned (a relative one is
			// one cache under every WORKDIR), as in BuildKit.
			id := cmp.Or(m.CacheID, path.Clean(m.Target))
			p.key = append(p.key, "cache "+id+" "+target)
			cacheID := id
			var seed func(dir string) error
			// Without from=, source= is the part of the cache mounted;
			// without it, mode=, uid= and gid= make the cache a new one
			// (BuildKit bases it on a directory made with them).
			sub := ""
			switch {
			case m.From != "":
			case path.Join("/", m.Source) != "/":
				sub = path.Join("/", m.Source)
				p.key[len(p.key)-1] += " source " + sub
			case m.Mode != nil || m.UID != nil || m.GID != nil:
				mode, uid, gid := ownership(m, 0o755)
				cacheID += fmt.Sprintf("\x00mode=%o uid=%d gid=%d", mode, uid, gid)
			}
			if m.From != "" {
				// A new cache starts as a copy of source in from (a stage or
				// an image): its files, owners and modes, the directory's
				// own too. Another base is another cache, as in BuildKit.
				root, what, err := b.sourceRoot(ctx, st, m.From)
				if err != nil {
					return nil, err
				}
				source := orRoot(m.Source)
				cacheID += "\x00" + what + "\x00" + source
				p.key[len(p.key)-1] += " from " + what + " " + source
				seed = func(dir string) error { return seedCache(ctx, root, source, dir) }
			}
			mode, uid, gid := ownership(m, 0o755)
			p.key[len(p.key)-1] += fmt.Sprintf(" mode=%o uid=%d gid=%d", mode, uid, gid)
			sum := sha256.Sum256([]byte(cacheID))
			dir := filepath.Join(b.root, "build", cacheMountsDir, hex.EncodeToString(sum[:12]))
			if m.ReadOnly {
				// ro: the step sees the cache and cannot change it.
				p.key[len(p.key)-1] += " ro"
			}
			// A new cache directory is made (seeded) aside and renamed
			// into place: a step of another build never sees it half
			// made, and a build killed meanwhile leaves none.
			prepare := func(tmp string) error {
				if seed != nil {
					if err := seed(tmp); err != nil {
						return fmt.Errorf("RUN --mount=type=cache,from=%s: %w", m.From, err)
					}
					return nil
				}
				if err := os.Chown(tmp, int(uid), int(gid)); err != nil {
					return err
				}
				return os.Chmod(tmp, os.FileMode(mode)&os.ModePerm)
			}
			sharing := m.CacheSharing
			p.make = append(p.make, func(*stageState) (steprun.Mount, error) {
				inst, release, err := b.cacheDir(ctx, dir, sharing, prepare)
				if err != nil {
					return steprun.Mount{}, err
				}
				p.after = append(p.after, release)
				if sub != "" {
					// Resolved in the cache: what earlier steps left
					// there (a symlink) leads nowhere outside it.
					if inst, err = resolveIn(inst, sub); err != nil {
						return steprun.Mount{}, fmt.Errorf("RUN --mount=type=cache,source=%s: not in the cache: %w", m.Source, err)
					}
				}
				spec := "type=bind,source=" + inst + ",target=" + target
				if m.ReadOnly {
					spec += ",readonly"
				}
				return steprun.ParseMount(spec)
			})
		case instructions.MountTypeTmpfs:
			if target == "" {
				return nil, errors.New("RUN --mount=type=tmpfs needs target=")
			}
			spec := "type=tmpfs,target=" + target
			if m.SizeLimit > 0 {
				spec += ",tmpfs-size=" + strconv.FormatInt(m.SizeLimit, 10)
			}
			p.key = append(p.key, spec)
			p.make = append(p.make, func(*stageState) (steprun.Mount, error) { return steprun.ParseMount(spec) })
		case instructions.MountTypeBind:
			if target == "" {
				return nil, errors.New("RUN --mount=type=bind needs target=")
			}
			root, what, err := b.bindRoot(ctx, st, m.From)
			if err != nil {
				return nil, err
			}
			src, err := resolveIn(root, m.Source)
			if err != nil {
				return nil, fmt.Errorf("RUN --mount=type=bind,source=%s: %w", m.Source, err)
			}
			sum, err := Checksum(ctx, CopySpec{SrcRoot: root, Sources: []string{orRoot(m.Source)}, Excludes: b.excludesFor(m.From)})
			if err != nil {
				return nil, fmt.Errorf("RUN --mount=type=bind,source=%s: %w", m.Source, err)
			}
			key := "bind " + what + " " + m.Source + " " + target + " " + sum.String()
			if m.ReadOnly {
				spec := "type=bind,source=" + src + ",target=" + target + ",readonly"
				p.key = append(p.key, key)
				p.make = append(p.make, func(*stageState) (steprun.Mount, error) { return steprun.ParseMount(spec) })
				break
			}
			p.key = append(p.key, key+" rw")
			source, from := m.Source, m.From
			p.make = append(p.make, func(*stageState) (steprun.Mount, error) {
				view, err := b.writableSource(ctx, st, src, what, from, source)
				if err != nil {
					return steprun.Mount{}, fmt.Errorf("RUN --mount=type=bind,rw,source=%s: %w", orRoot(source), err)
				}
				return steprun.ParseMount("type=bind,source=" + view + ",target=" + target)
			})
		default:
			return nil, fmt.Errorf("RUN --mount=type=%s is not supported", m.Type)
		}
	}
	return p, nil
}

// bindRoot is what a RUN --mount=type=bind binds from: sourceRoot, but the
// context without what the ignore file hides, as BuildKit, which receives
// the context filtered, binds it (a secret kept out of the build by
// .dockerignore stays out of RUN too). The filtered copy is made once a
// build, in its directory.
func (b *builder) bindRoot(ctx context.Context, st *stageState, from string) (string, string, error) {
	root, what, err := b.sourceRoot(ctx, st, from)
	if err != nil || from != "" || len(b.ignore) == 0 {
		return root, what, err
	}
	if b.filtered == "" {
		dir := filepath.Join(b.work, "context")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return "", "", err
		}
		if _, err := Copy(ctx, CopySpec{SrcRoot: root, Sources: []string{"/"}, Excludes: b.ignore,
			DestRoot: dir, Dest: "/", KeepOwners: true}); err != nil {
			return "", "", fmt.Errorf("the context without what the ignore file hides: %w", err)
		}
		b.filtered = dir
	}
	return b.filtered, what, nil
}

// ownership is a mount's mode=, uid= and gid=, defaulting to mode and
// root's.
func ownership(m *instructions.Mount, mode uint64) (uint64, uint64, uint64) {
	uid, gid := uint64(0), uint64(0)
	if m.Mode != nil {
		mode = *m.Mode
	}
	if m.UID != nil {
		uid = *m.UID
	}
	if m.GID != nil {
		gid = *m.GID
	}
	return mode, uid, gid
}

// secretsDir is the name of a build's tmpfs for the files its secret
// mounts bind (in its working directory).
const secretsDir = "secrets"

// maxSecretSize bounds a secret, as BuildKit bounds it.
const maxSecretSize = 500 << 10

// secretFile writes secret id (the value src gives) into the
// build's secrets tmpfs, mounted on first use, as a file of mode, uid and
// gid (BuildKit's default: 0400, root's), and returns its path. Secrets
// never reach a disk; the tmpfs goes with the build.
func (b *builder) secretFile(id string, src Secret, mode os.FileMode, uid, gid int) (string, error) {
	// One file per secret and metadata, for the whole build: its steps
	// bind the same file.
	key := fmt.Sprintf("%s %o %d:%d", id, mode, uid, gid)
	if file, ok := b.secretFiles[key]; ok {
		return file, nil
	}
	data, err := src.read(id)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.work, secretsDir)
	if !slices.Contains(b.kmounts, dir) {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", err
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64m"); err != nil {
			return "", fmt.Errorf("mounting a tmpfs for secrets: %w", err)
		}
		b.kmounts = append(b.kmounts, dir)
	}
	b.n++
	file := filepath.Join(dir, strconv.Itoa(b.n))
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return "", err
	}
	if err := os.Chown(file, uid, gid); err != nil {
		return "", err
	}
	if err := os.Chmod(file, mode); err != nil {
		return "", err
	}
	if b.secretFiles == nil {
		b.secretFiles = map[string]string{}
	}
	b.secretFiles[key] = file
	return file, nil
}

// read returns the value of secret id, refusing one larger than
// maxSecretSize.
func (s Secret) read(id string) ([]byte, error) {
	var data []byte
	if s.File == "" {
		v, ok := os.LookupEnv(s.Env)
		if !ok {
			return nil, fmt.Errorf("secret %q: the environment variable %s is not set", id, s.Env)
		}
		data = []byte(v)
	} else {
		f, err := os.Open(s.File)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", id, err)
		}
		defer f.Close()
		if data, err = io.ReadAll(io.LimitReader(f, maxSecretSize+1)); err != nil {
			return nil, fmt.Errorf("secret %q: %w", id, err)
		}
	}
	if len(data) > maxSecretSize {
		return nil, fmt.Errorf("secret %q is larger than %d KiB", id, maxSecretSize>>10)
	}
	return data, nil
}

// seedCache fills new cache directory dir with the contents of source in
// root, owners and modes kept, and gives dir source's owner and mode.
func seedCache(ctx context.Context, root, source, dir string) error {
	src, err := resolveIn(root, source)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("source=%s is not a directory", source)
	}
	if _, err := Copy(ctx, CopySpec{SrcRoot: root, Sources: []string{source}, DestRoot: dir, Dest: "/", KeepOwners: true}); err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return os.Chmod(dir, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
}

// writableSource is the host path an rw bind mount binds: source of the
// context through writableView, or of a stage or image (what, REPO@DIGEST)
// in a writable mount of its own, dropped with the build: lazy as any
// mount, where a copy of the stage's files would fetch them all.
func (b *builder) writableSource(ctx context.Context, st *stageState, src, what, from, source string) (string, error) {
	if from == "" {
		return b.writableView(src)
	}
	dir, err := b.mountNew(ctx, daemon.MountRequest{Ref: what, Platform: st.platform, Writable: true})
	if err != nil {
		return "", err
	}
	return resolveIn(dir, source)
}

// writableView gives a RUN's rw bind mount a view of src that the step may
// change without changing src: its writes are dropped with the build, as
// BuildKit drops them. A directory is an overlay with src as its only
// lower layer, or a copy where overlayfs refuses (a state root on
// overlayfs, a context too deep in stacked filesystems); a file is copied.
func (b *builder) writableView(src string) (string, error) {
	b.n++
	base := filepath.Join(b.work, rwPrefix+strconv.Itoa(b.n))
	fi, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(base, 0o700); err != nil {
		return "", err
	}
	merged := filepath.Join(base, "merged")
	if !fi.IsDir() {
		return merged, copyFile(merged, src, fi)
	}
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	if err := kmount.Overlay(merged, []string{src}, upper, work); err == nil {
		b.kmounts = append(b.kmounts, merged)
		return merged, nil
	}
	return merged, fs.CopyDir(merged, src)
}

// rwPrefix starts the names of writableView's directories in a build's
// working directory.
const rwPrefix = "rw-"

// copyFile copies the regular file src, whose Lstat is fi, to dst with its
// mode and owner.
func copyFile(dst, src string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is neither a directory nor a regular file", src)
	}
	if err := fs.CopyFile(dst, src); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	return os.Chmod(dst, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
}

func orRoot(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// resolveIn resolves p inside root, following symlinks inside it, and
// returns the host path.
func resolveIn(root, p string) (string, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, root, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC})
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	rel := strings.TrimLeft(path.Clean("/"+p), "/")
	if rel == "" {
		return root, nil
	}
	f, err := unix.Openat2(fd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	defer unix.Close(f)
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(f))
	if err != nil {
		return "", err
	}
	if real != root && !strings.HasPrefix(real, strings.TrimSuffix(root, "/")+"/") {
		return "", fmt.Errorf("%s resolves outside its root", p)
	}
	return real, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

var _ io.Writer = (*tailBuffer)(nil)

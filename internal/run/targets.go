package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// targets makes the mount destinations (and a missing working directory)
// that the rootfs lacks, and takes them away again after the run: the
// runtime would otherwise create them itself, in the layer.
//
// Lifecycle: ensure for every destination, seal once before the runtime
// starts, cleanup once after it has exited (also on every error path;
// cleanup of nothing is a no-op).
type targets struct {
	root    *root
	created []createdEntry
	ours    map[string]bool         // paths in created
	parents map[string]*parentTimes // pre-existing directories we added entries to
	order   []string                // parents in the order first touched
	sealed  bool                    // seal was called: the command may have run
	// workDir is set while ensureWorkDir makes the working directory:
	// errors name it, and with keep what it makes stays after the run.
	workDir, keep bool
}

// createdEntry is a target ensure made. It is known again by its inode
// number or, failing that, its ctime: overlayfs numbers a directory anew
// each time its inode is read back into memory when the layers are on
// different filesystems (as a FUSE layer and a disk upper are), so after
// memory pressure or a dropped cache a directory made for the run has
// another number, and would otherwise stay in the layer. A command that
// replaces the entry gives it a new ctime too.
type createdEntry struct {
	path  string
	dir   bool
	ino   uint64
	ctime unix.Timespec // as sealed (setMode changes it after create)
}

// parentTimes is what a pre-existing directory looked like before we added
// to it (restored afterwards) and after (to tell whether the command
// changed it too, in which case its new mtime is the command's and stays).
type parentTimes struct {
	atime, mtime unix.Timespec
	sealed       unix.Timespec // mtime once every target was made
}

// maxSymlinks is the kernel's own limit (ELOOP).
const maxSymlinks = 40

func newTargets(r *root) *targets {
	return &targets{root: r, ours: map[string]bool{}, parents: map[string]*parentTimes{}}
}

// ensureWorkDir makes the working directory dest as ensure makes a
// directory; with keep, what it makes stays after the run (but for what it
// makes inside a target made for the run, which goes with that target).
func (t *targets) ensureWorkDir(dest string, keep bool) (string, error) {
	t.workDir, t.keep = true, keep
	defer func() { t.workDir, t.keep = false, false }()
	return t.ensure(dest, false)
}

// noun is what ensure makes, for its errors.
func (t *targets) noun() string {
	if t.workDir {
		return "working directory"
	}
	return "mount target"
}

// ensure makes dest exist in the root — an empty file when file is true, a
// directory otherwise — creating every missing parent directory, and
// returns dest with its symlinks resolved inside the root (the path the
// runtime will mount on). Symlinks are followed the way the runtime
// follows them (inside the root), so a dangling /etc/resolv.conf symlink
// gets its target created, not a host file.
func (t *targets) ensure(dest string, file bool) (string, error) {
	todo := splitPath(dest)
	cur, links := "/", 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, name)
		st, err := t.root.lstat(next)
		switch {
		case errors.Is(err, unix.ENOENT):
			if err := t.create(cur, name, file && len(todo) == 0); err != nil {
				return "", fmt.Errorf("run: making %s %s: %w", t.noun(), dest, err)
			}
		case err != nil:
			return "", fmt.Errorf("run: %s %s: %w", t.noun(), dest, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			if links++; links > maxSymlinks {
				return "", fmt.Errorf("run: %s %s: %w", t.noun(), dest, unix.ELOOP)
			}
			target, err := t.root.readlink(next)
			if err != nil {
				return "", fmt.Errorf("run: %s %s: %w", t.noun(), dest, err)
			}
			if strings.HasPrefix(target, "/") {
				cur = "/"
			}
			todo = append(splitPath(target), todo...)
			continue
		case len(todo) > 0 && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return "", fmt.Errorf("run: %s %s: %s is not a directory in the image", t.noun(), dest, next)
		case len(todo) == 0 && file == (st.Mode&unix.S_IFMT == unix.S_IFDIR):
			return "", fmt.Errorf("run: %s %s: the image has a %s there, the %s needs a %s",
				t.noun(), dest, kindOf(!file), t.noun(), kindOf(file))
		}
		cur = next
	}
	return cur, nil
}

func kindOf(file bool) string {
	if file {
		return "file"
	}
	return "directory"
}

// splitPath gives the elements of p, dropping empty and "." ones; ".."
// stays, for ensure to apply to the resolved prefix.
func splitPath(p string) []string {
	var out []string
	for _, e := range strings.Split(p, "/") {
		if e != "" && e != "." {
			out = append(out, e)
		}
	}
	return out
}

// create makes dir/name, recording it, and the times of dir when dir is
// not ours.
func (t *targets) create(dir, name string, file bool) error {
	pfd, err := t.root.openFD(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	keep := t.keep && !t.ours[dir]
	if !keep && !t.ours[dir] && t.parents[dir] == nil {
		var st unix.Stat_t
		if err := unix.Fstat(pfd, &st); err != nil {
			return err
		}
		t.parents[dir] = &parentTimes{atime: st.Atim, mtime: st.Mtim}
		t.order = append(t.order, dir)
	}
	if file {
		fd, err := unix.Openat(pfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		unix.Close(fd)
	} else if err := unix.Mkdirat(pfd, name, 0o755); err != nil {
		return err
	}
	if keep {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	p := path.Join(dir, name)
	t.created = append(t.created, createdEntry{path: p, dir: !file, ino: st.Ino, ctime: st.Ctim})
	t.ours[p] = true
	return nil
}

// setMode gives p the permission bits mode when it is a directory made
// for the run; one of the image keeps its own.
func (t *targets) setMode(p string, mode uint32) error {
	if !t.ours[p] {
		return nil
	}
	pfd, err := t.root.openFD(path.Dir(p), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := unix.Fchmodat(pfd, path.Base(p), mode, 0); err != nil {
		return fmt.Errorf("run: mount target %s: %w", p, err)
	}
	return nil
}

// seal notes each touched parent's mtime now that every target exists.
func (t *targets) seal() {
	t.sealed = true
	// Nothing but ensure has touched them yet: what they are now is
	// what they were made as.
	for i, c := range t.created {
		if st, err := t.root.lstat(c.path); err == nil {
			t.created[i].ino, t.created[i].ctime = st.Ino, st.Ctim
		}
	}
	for _, dir := range t.order {
		if st, err := t.root.lstat(dir); err == nil {
			t.parents[dir].sealed = st.Mtim
		}
	}
}

// cleanup removes what ensure created, deepest first, and restores the
// times of the parents it touched. An entry is kept when it is no longer
// ours to remove: a directory the command wrote into, or a path the
// command replaced. Errors are joined; cleanup goes on after one.
func (t *targets) cleanup() error {
	var errs []error
	kept := map[string]bool{}
	changed := map[string]bool{}
	for _, dir := range t.order {
		// Before seal no command ran: nothing but ensure changed the
		// parents (a run that failed to start).
		st, err := t.root.lstat(dir)
		changed[dir] = err != nil || t.sealed && st.Mtim != t.parents[dir].sealed
	}
	index := make(map[string]int, len(t.created))
	for i, c := range t.created {
		index[c.path] = i
	}
	for i := len(t.created) - 1; i >= 0; i-- {
		c := t.created[i]
		removed, err := t.remove(c)
		if err != nil {
			errs = append(errs, err)
		}
		if !removed {
			kept[path.Dir(c.path)] = true
			continue
		}
		// Removing it changed its parent's ctime: when the parent is
		// one of ours too, that ctime is still ours.
		if j, ok := index[path.Dir(c.path)]; ok {
			if st, err := t.root.lstat(t.created[j].path); err == nil {
				t.created[j].ctime = st.Ctim
			}
		}
	}
	for _, dir := range t.order {
		if kept[dir] || changed[dir] {
			continue
		}
		if err := t.restoreTimes(dir, t.parents[dir]); err != nil {
			errs = append(errs, err)
		}
	}
	t.created, t.order = nil, nil
	return errors.Join(errs...)
}

// remove deletes one created entry if it is still the one we made (same
// inode; a file still empty) and, for a directory, empty.
func (t *targets) remove(c createdEntry) (removed bool, err error) {
	dir, name := path.Split(c.path)
	pfd, err := t.root.openFD(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return false, fmt.Errorf("removing %s: %w", c.path, err)
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return true, nil
		}
		return false, fmt.Errorf("removing %s: %w", c.path, err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if st.Ino != c.ino && st.Ctim != c.ctime || isDir != c.dir || (!isDir && st.Size != 0) {
		return false, nil
	}
	flags := 0
	if c.dir {
		flags = unix.AT_REMOVEDIR
	}
	switch err := unix.Unlinkat(pfd, name, flags); {
	case err == nil, errors.Is(err, unix.ENOENT):
		return true, nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return false, nil
	default:
		return false, fmt.Errorf("removing %s: %w", c.path, err)
	}
}

// restoreTimes sets dir's atime and mtime back. dir has no symlinks in it
// (ensure resolved it), so AT_SYMLINK_NOFOLLOW on the last element only
// guards against a swap by the command.
func (t *targets) restoreTimes(dir string, p *parentTimes) error {
	ts := []unix.Timespec{p.atime, p.mtime}
	if dir == "/" {
		return unix.UtimesNanoAt(t.root.fd, ".", ts, 0)
	}
	parent, name := path.Split(dir)
	pfd, err := t.root.openFD(parent, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("restoring times of %s: %w", dir, err)
	}
	defer unix.Close(pfd)
	if err := unix.UtimesNanoAt(pfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("restoring times of %s: %w", dir, err)
	}
	return nil
}

// savedTargets is targets as written to a run's state dir once sealed, so
// that Sweep can take them away after a run whose process died.
type savedTargets struct {
	Rootfs  string        `json:"rootfs"`
	Created []savedEntry  `json:"created"`
	Parents []savedParent `json:"parents"` // in the order first touched
}

type savedEntry struct {
	Path  string        `json:"path"`
	Dir   bool          `json:"dir"`
	Ino   uint64        `json:"ino"`
	Ctime unix.Timespec `json:"ctime"`
}

type savedParent struct {
	Path   string        `json:"path"`
	Atime  unix.Timespec `json:"atime"`
	Mtime  unix.Timespec `json:"mtime"`
	Sealed unix.Timespec `json:"sealed"`
}

// save writes what cleanup needs to file.
func (t *targets) save(rootfs, file string) error {
	s := savedTargets{Rootfs: rootfs}
	for _, c := range t.created {
		s.Created = append(s.Created, savedEntry{Path: c.path, Dir: c.dir, Ino: c.ino, Ctime: c.ctime})
	}
	for _, dir := range t.order {
		p := t.parents[dir]
		s.Parents = append(s.Parents, savedParent{Path: dir, Atime: p.atime, Mtime: p.mtime, Sealed: p.sealed})
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o600)
}

// cleanupSaved takes away the targets saved in file by a run that can no
// longer do it itself.
func cleanupSaved(file string) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var s savedTargets
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r, err := openRoot(s.Rootfs)
	if err != nil {
		return err
	}
	defer r.close()
	t := newTargets(r)
	for _, c := range s.Created {
		t.created = append(t.created, createdEntry{path: c.Path, dir: c.Dir, ino: c.Ino, ctime: c.Ctime})
		t.ours[c.Path] = true
	}
	t.sealed = true // saved once sealed
	for _, p := range s.Parents {
		t.order = append(t.order, p.Path)
		t.parents[p.Path] = &parentTimes{atime: p.Atime, mtime: p.Mtime, sealed: p.Sealed}
	}
	return t.cleanup()
}

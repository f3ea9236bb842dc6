package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/patternmatcher"
	"golang.org/x/sys/unix"
)

func procFdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// fsRoot is a directory tree opened once; every path given to its methods
// is resolved inside it, as if it were "/".
type fsRoot struct {
	fd   int    // O_PATH
	path string // host path, for messages
	real string // host path as the kernel names it, for relOf
}

func openFsRoot(dir string) (*fsRoot, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	r := &fsRoot{fd: fd, path: dir}
	r.real, _ = os.Readlink(procFdPath(fd))
	return r, nil
}

// close is safe on a nil root, which openSrc returns when there is no need.
func (r *fsRoot) close() {
	if r != nil {
		unix.Close(r.fd)
	}
}

// open opens rel with flags, following symlinks inside r.
func (r *fsRoot) open(rel string, flags int) (int, error) {
	return r.openat2(rel, unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
}

// openat2 opens rel below r as how says.
func (r *fsRoot) openat2(rel string, how unix.OpenHow) (int, error) {
	if rel == "" {
		rel = "."
	}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(r.fd, rel, &how)
		switch {
		case err == nil:
			return fd, nil
		case (err == unix.EAGAIN || err == unix.EINTR) && tries < 16:
			continue // a rename raced with the lookup; the kernel asks to retry
		case err == unix.ENOSYS:
			return -1, fmt.Errorf("openat2 %s: %w (Linux 5.6 or later is needed)", "/"+rel, err)
		default:
			return -1, &os.PathError{Op: "openat2", Path: "/" + rel, Err: err}
		}
	}
}

// openParents opens rel, a COPY --parents source (or a match of one), as
// BuildKit copies one: no symlink is followed, its pivot's (see
// parentsPivot) included, where BuildKit's copy walks with lstat: a
// symlink on the way makes rel name nothing (ELOOP), and one at its end is
// opened itself (O_PATH), to be copied as a symlink.
func (r *fsRoot) openParents(rel string, flags int) (int, error) {
	return r.openat2(rel, unix.OpenHow{Flags: uint64(flags | unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS})
}

// relOf names where fd, opened in r, is: its path relative to r's root.
func (r *fsRoot) relOf(fd int) (string, bool) {
	p, err := os.Readlink(procFdPath(fd))
	if err != nil || r.real == "" {
		return "", false
	}
	if r.real == "/" {
		return strings.TrimPrefix(p, "/"), true
	}
	if p == r.real {
		return "", true
	}
	rel, ok := strings.CutPrefix(p, r.real+"/")
	return rel, ok
}

// glob expands rel, holding wildcards, to the paths in r that match it, in
// name order. The part before the first wildcard is followed like any
// path; matches below it are walked without following symlinks, as
// filepath.Walk does in BuildKit.
func (r *fsRoot) glob(rel string) ([]string, error) {
	comps := strings.Split(rel, "/")
	i := slices.IndexFunc(comps, hasWildcards)
	base := strings.Join(comps[:i], "/")
	fd, err := r.open(base, unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return globIn(fd, base, comps[i:])
}

// globIn matches patterns, one per path component, below directory fd,
// which it closes; prefix is fd's path.
func globIn(fd int, prefix string, patterns []string) ([]string, error) {
	dir := os.NewFile(uintptr(fd), prefix)
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var out []string
	for _, name := range names {
		ok, err := path.Match(patterns[0], name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		p := path.Join(prefix, name)
		if len(patterns) == 1 {
			out = append(out, p)
			continue
		}
		sub, err := openDirAt(fd, name, unix.O_RDONLY)
		if err != nil {
			continue // not a directory: nothing below it matches
		}
		more, err := globIn(sub, p, patterns[1:])
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// globParents expands pattern, holding wildcards, below directory pivot of
// r as COPY --parents does: as BuildKit's include pattern of the copy from
// pivot, in which "**" matches any number of path components, none too,
// and a directory that matches is taken whole. The tree is walked in name
// order without following symlinks, into directories only where the
// pattern may match below. It returns the matches' paths in r, leaving out
// those excl (the --exclude patterns, matched from pivot) hides.
func (r *fsRoot) globParents(ctx context.Context, pivot, pattern string, excl *patternmatcher.PatternMatcher) ([]string, error) {
	pm, err := patternmatcher.New([]string{pattern})
	if err != nil {
		return nil, err
	}
	fd, err := r.open(pivot, unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	_, info, err := matchPath(excl, "")
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	var out []string
	var walk func(fd int, rel string, info patternmatcher.MatchInfo) error
	walk = func(fd int, rel string, info patternmatcher.MatchInfo) error {
		dir := os.NewFile(uintptr(fd), rel)
		defer dir.Close()
		names, err := dir.Readdirnames(-1)
		if err != nil {
			return err
		}
		slices.Sort(names)
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := path.Join(rel, name)
			excluded, sub := false, info
			if excl != nil {
				if excluded, sub, err = excl.MatchesUsingParentResults(p, info); err != nil {
					return fmt.Errorf("--exclude: %w", err)
				}
			}
			matched, err := pm.MatchesOrParentMatches(p)
			if err != nil {
				return err
			}
			if !matched && !mayMatchBelow(pattern, p) {
				continue
			}
			dfd, err := openDirAt(fd, name, unix.O_RDONLY)
			isDir := err == nil
			switch {
			case matched && isDir:
				unix.Close(dfd)
				// An excluded directory is still copied when an
				// exception may bring back something below it.
				if !excluded || excl.Exclusions() {
					out = append(out, path.Join(pivot, p))
				}
			case matched:
				if !excluded {
					out = append(out, path.Join(pivot, p))
				}
			case isDir:
				if err := walk(dfd, p, sub); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(fd, "", info); err != nil {
		return nil, err
	}
	return out, nil
}

// newDirAttrs are the mode and owner of the directories made on the way to
// a destination.
type newDirAttrs struct {
	uid, gid int
	mode     uint32
}

// apply gives directory name in parent, just made, the attributes.
func (a newDirAttrs) apply(parent int, name string) error {
	if err := unix.Fchownat(parent, name, a.uid, a.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "chown", Path: name, Err: err}
	}
	if err := unix.Fchmodat(parent, name, a.mode, 0); err != nil {
		return &os.PathError{Op: "chmod", Path: name, Err: err}
	}
	return nil
}

// mkdirAll opens directory rel of r (an O_PATH descriptor the caller
// closes), making the missing ones with attrs a. Symlinks on the way are
// followed inside r, dangling ones too: what they point to is made, as
// BuildKit's MkdirAll does. It returns how many directories it made.
func (r *fsRoot) mkdirAll(rel string, a newDirAttrs) (int, int, error) {
	return r.mkdirs(rel, a, true)
}

// mkdirAllNoDangling is mkdirAll for the parents of an archive's entries
// (ADD of a local archive): a dangling symlink on the way is an error, as
// BuildKit's and buildah's unpacks fail there, rather than a directory made
// where it points (which would put the entry somewhere the link does not
// lead once the image runs).
func (r *fsRoot) mkdirAllNoDangling(rel string, a newDirAttrs) (int, int, error) {
	return r.mkdirs(rel, a, false)
}

func (r *fsRoot) mkdirs(rel string, a newDirAttrs, dangling bool) (int, int, error) {
	comps := splitRelPath(rel)
	parent, err := r.open(".", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, 0, err
	}
	made, hops := 0, 0
	for i := 0; i < len(comps); i++ {
		prefix := strings.Join(comps[:i+1], "/")
		fd, err := r.open(prefix, unix.O_PATH|unix.O_DIRECTORY)
		if err == nil {
			unix.Close(parent)
			parent = fd
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			unix.Close(parent)
			return -1, made, err
		}
		err = unix.Mkdirat(parent, comps[i], 0o700)
		if errors.Is(err, unix.EEXIST) && !dangling {
			unix.Close(parent)
			return -1, made, fmt.Errorf("/%s: a symlink to nothing: %w", prefix, unix.ENOENT)
		}
		if errors.Is(err, unix.EEXIST) {
			// comps[i] is a dangling symlink: go on from what it points to.
			target, err := readlinkAt(parent, comps[i])
			unix.Close(parent)
			if err != nil {
				return -1, made, fmt.Errorf("mkdir /%s: %w", prefix, err)
			}
			if hops++; hops > 40 {
				return -1, made, &os.PathError{Op: "mkdir", Path: "/" + prefix, Err: unix.ELOOP}
			}
			next := splitRelPath(target)
			if !path.IsAbs(target) {
				next = append(slices.Clone(comps[:i]), next...)
			}
			comps = append(next, comps[i+1:]...)
			if parent, err = r.open(".", unix.O_PATH|unix.O_DIRECTORY); err != nil {
				return -1, made, err
			}
			i = -1
			continue
		}
		if err == nil {
			made++
			err = a.apply(parent, comps[i])
		}
		if err == nil {
			fd, err = openDirAt(parent, comps[i], unix.O_PATH)
		}
		unix.Close(parent)
		if err != nil {
			return -1, made, fmt.Errorf("mkdir /%s: %w", prefix, err)
		}
		parent = fd
	}
	return parent, made, nil
}

// mkdirAllNoFollow is mkdirAll for COPY --link: a symlink or file on the
// way is never followed but replaced by a directory.
func (r *fsRoot) mkdirAllNoFollow(rel string, a newDirAttrs) (int, int, error) {
	parent, err := r.open(".", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, 0, err
	}
	made := 0
	for _, name := range splitRelPath(rel) {
		var st unix.Stat_t
		err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			err = unix.Unlinkat(parent, name, 0)
			if err == nil {
				err = unix.ENOENT
			}
		}
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(parent, name, 0o700); err == nil {
				made++
				err = a.apply(parent, name)
			}
		}
		var fd int
		if err == nil {
			fd, err = openDirAt(parent, name, unix.O_PATH)
		}
		unix.Close(parent)
		if err != nil {
			return -1, made, fmt.Errorf("mkdir %s in /%s: %w", name, rel, err)
		}
		parent = fd
	}
	return parent, made, nil
}

// splitRelPath splits p into its components, dropping empty ones and "." but
// keeping "..", which only a lookup can resolve.
func splitRelPath(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// openDirAt opens directory name of dir, never through a symlink.
func openDirAt(dir int, name string, flags int) (int, error) {
	fd, err := unix.Openat(dir, name, flags|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return fd, nil
}

func readlinkAt(dir int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dir, name, buf)
		if err != nil {
			return "", &os.PathError{Op: "readlink", Path: name, Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

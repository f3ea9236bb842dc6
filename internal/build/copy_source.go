package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/moby/patternmatcher"
	"golang.org/x/sys/unix"
)

// copySource is one source once wildcards are expanded.
type copySource struct {
	written string      // as in the Dockerfile, for messages
	url     string      // an ADD URL; the fields below but base are then unset
	rel     string      // its path in SrcRoot, cleaned ("" is SrcRoot itself)
	real    string      // where rel leads once symlinks are followed; excludes apply to it
	base    string      // the name it takes in a directory destination
	fd      int         // O_PATH descriptor, -1 for a URL
	st      unix.Stat_t // what rel leads to
}

// node is s as a srcNode, reopened from src to be read; a symlink (a
// COPY --parents source, which is not followed) is read through its own
// descriptor.
func (s *copySource) node(src *fsRoot) *srcNode {
	if s.st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return &srcNode{rel: s.rel, st: s.st, dir: s.fd, name: ""}
	}
	return &srcNode{rel: s.rel, st: s.st, reopen: func() (int, error) {
		return src.open(s.rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	}}
}

func closeSources(sources []*copySource) {
	for _, s := range sources {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
	}
}

// sources expands p.Sources in src, in order, wildcards in name order.
func (p *copyPlan) sources(ctx context.Context, src *fsRoot) (out []*copySource, err error) {
	defer func() {
		if err != nil {
			closeSources(out)
			out = nil
		}
	}()
	for _, written := range p.Sources {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		if p.isURL(written) {
			if !p.Add {
				return out, fmt.Errorf("COPY failed: source can't be a URL for COPY: %s", redactURL(written))
			}
			out = append(out, &copySource{written: written, url: written, base: urlFileName(written), fd: -1})
			continue
		}
		rel := cleanRel(written)
		pivot, pattern := parentsPivot(written)
		deep := p.Parents && hasWildcards(pattern) && !hasWildcards(pivot)
		if !deep && !hasWildcards(rel) {
			s, err := p.resolve(ctx, src, rel, written)
			if err != nil {
				return out, err
			}
			if s == nil {
				return out, fmt.Errorf("%s failed: %w: stat %s: file does not exist", p.op, ErrSourceNotFound, written)
			}
			out = append(out, s)
			continue
		}
		var matches []string
		var err error
		if deep {
			matches, err = src.globParents(ctx, pivot, pattern, p.srcExcl)
		} else {
			matches, err = src.glob(rel)
		}
		if err != nil {
			return out, fmt.Errorf("%s failed: %s: %w", p.op, written, err)
		}
		// A wildcard that matches nothing copies nothing, as BuildKit's
		// AllowEmptyWildcard has it (COPY package.json yarn.lock* ./).
		for _, m := range matches {
			s, err := p.resolve(ctx, src, m, written)
			if err != nil {
				return out, err
			}
			if s != nil {
				out = append(out, s)
			}
		}
	}
	if len(out) > 1 && !p.destDir {
		//lint:ignore ST1005 Docker's message, word for word: users search for it
		return out, fmt.Errorf("When using %s with more than one source file, %w", p.op, ErrDestNotDirectory)
	}
	return out, nil
}

// resolve opens rel in src, following symlinks inside it; it returns nil
// when rel names nothing or what the excludes hide. Under COPY --parents
// none are (see openParents).
func (p *copyPlan) resolve(ctx context.Context, src *fsRoot, rel, written string) (*copySource, error) {
	open := src.open
	if p.Parents {
		open = src.openParents
	}
	fd, err := open(rel, unix.O_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) && p.Parents {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s failed: %w", p.op, err)
	}
	s := &copySource{written: written, rel: rel, real: rel, base: path.Base("/" + rel), fd: fd}
	if err := unix.Fstat(fd, &s.st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s failed: stat %s: %w", p.op, written, err)
	}
	if real, ok := src.relOf(fd); ok {
		s.real = real
	}
	typ := s.st.Mode & unix.S_IFMT
	if typ == unix.S_IFSOCK {
		unix.Close(fd)
		return nil, fmt.Errorf("%s failed: %s is a socket", p.op, written)
	}
	hidden := p.hides(rel) || p.hides(s.real)
	if hidden && typ == unix.S_IFDIR && p.excl.Exclusions() {
		hidden, err = p.holdsNothing(ctx, s)
	}
	if hidden || err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

// hides says whether the excludes hide rel, a path relative to SrcRoot.
func (p *copyPlan) hides(rel string) bool {
	if p.excl == nil || rel == "" {
		return false
	}
	m, err := p.excl.MatchesOrParentMatches(rel)
	return err == nil && m
}

// holdsNothing says whether excluded directory s holds nothing that an
// exception brings back.
func (p *copyPlan) holdsNothing(ctx context.Context, s *copySource) (bool, error) {
	fd, err := unix.Openat(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, &os.PathError{Op: "open", Path: s.written, Err: err}
	}
	dir := os.NewFile(uintptr(fd), s.written)
	defer dir.Close()
	found := errors.New("found")
	walk := &treeWalker{ctx: ctx, excl: p.excl, base: s.real, visit: func(*srcNode, bool) error { return found }}
	switch err := walk.walk(dir, "", patternmatcher.MatchInfo{}); {
	case errors.Is(err, found):
		return false, nil
	case err != nil:
		return false, err
	default:
		return true, nil
	}
}

// hasWildcards says whether p holds one of filepath.Match's special
// characters, not escaped.
func hasWildcards(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '*', '?', '[':
			return true
		case '\\':
			i++
		}
	}
	return false
}

// srcNode is one entry of a source tree as a treeWalker visits it.
type srcNode struct {
	rel     string      // slash path below the walked directory
	name    string      // its name in dir
	dir     int         // the directory holding it, open while it is visited
	st      unix.Stat_t // lstat of it
	file    *os.File    // a directory, open while its contents are walked
	reopen  func() (int, error)
	visited bool
}

// open opens regular file n for reading and checks it is still the file
// that was walked: a fifo or device put in its place is never read.
func (n *srcNode) open() (*os.File, error) {
	var fd int
	var err error
	if n.reopen != nil {
		fd, err = n.reopen()
	} else {
		fd, err = unix.Openat(n.dir, n.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: n.rel, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Dev != n.st.Dev || st.Ino != n.st.Ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s changed while being copied", n.rel)
	}
	return os.NewFile(uintptr(fd), n.rel), nil
}

// treeWalker visits the tree below a directory in name order, directories
// before their contents (and once more after them, leaving), without
// following symlinks. What the excludes hide is skipped; an excluded
// directory is still walked when an exception may match below it, and
// visited only once something below it is.
type treeWalker struct {
	ctx     context.Context
	excl    *patternmatcher.PatternMatcher // nil hides nothing
	base    string                         // the walked directory's path in SrcRoot, the excludes' frame
	srcExcl *patternmatcher.PatternMatcher // CopySpec.SourceExcludes, matched below the walked directory; nil hides nothing
	// srcExclBase is the path srcExcl sees for the walked directory ("":
	// its paths start below it).
	srcExclBase string
	visit       func(n *srcNode, leaving bool) error
	pending     []*srcNode // excluded directories walked into and not visited yet
}

// walk visits the entries of dir, at rel below the walked directory; info
// is rel's result for srcExcl.
func (w *treeWalker) walk(dir *os.File, rel string, info patternmatcher.MatchInfo) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return &os.PathError{Op: "readdir", Path: rel, Err: err}
	}
	slices.Sort(names)
	dirFd := int(dir.Fd())
	for _, name := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		n := &srcNode{rel: path.Join(rel, name), name: name, dir: dirFd}
		if err := unix.Fstatat(dirFd, name, &n.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return &os.PathError{Op: "lstat", Path: n.rel, Err: err}
		}
		typ := n.st.Mode & unix.S_IFMT
		if typ == unix.S_IFSOCK {
			continue
		}
		hidden, walkIn := w.hidden(n.rel)
		var sub patternmatcher.MatchInfo
		if w.srcExcl != nil {
			var out bool
			if out, sub, err = w.srcExcl.MatchesUsingParentResults(path.Join(w.srcExclBase, n.rel), info); err != nil {
				return fmt.Errorf("--exclude: %w", err)
			}
			if out {
				// Walked into only when an exception may bring back
				// something below, and the other excludes allow it.
				walkIn = w.srcExcl.Exclusions() && (!hidden || walkIn)
				hidden = true
			}
		}
		switch {
		case typ == unix.S_IFDIR && (!hidden || walkIn):
			err = w.walkDir(n, hidden, sub)
		case hidden:
		default:
			err = w.emit(n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (w *treeWalker) walkDir(n *srcNode, hidden bool, info patternmatcher.MatchInfo) error {
	fd, err := openDirAt(n.dir, n.name, unix.O_RDONLY)
	if err != nil {
		return err
	}
	n.file = os.NewFile(uintptr(fd), n.rel)
	defer n.file.Close()
	if hidden {
		w.pending = append(w.pending, n)
	} else if err := w.emit(n); err != nil {
		return err
	}
	if err := w.walk(n.file, n.rel, info); err != nil {
		return err
	}
	if !n.visited {
		w.pending = w.pending[:len(w.pending)-1]
		return nil
	}
	return w.visit(n, true)
}

// emit visits n, after the excluded directories above it not visited yet.
func (w *treeWalker) emit(n *srcNode) error {
	for _, p := range w.pending {
		p.visited = true
		if err := w.visit(p, false); err != nil {
			return err
		}
	}
	w.pending = w.pending[:0]
	n.visited = true
	return w.visit(n, false)
}

// matchPath matches rel, component by component (as a walk from the
// root would reach it), against pm: whether pm excludes it, and the result
// its children are matched with. A nil pm or an empty rel excludes nothing.
func matchPath(pm *patternmatcher.PatternMatcher, rel string) (bool, patternmatcher.MatchInfo, error) {
	var info patternmatcher.MatchInfo
	if pm == nil || rel == "" {
		return false, info, nil
	}
	var out bool
	comps := strings.Split(rel, "/")
	for i := range comps {
		var err error
		if out, info, err = pm.MatchesUsingParentResults(path.Join(comps[:i+1]...), info); err != nil {
			return false, info, fmt.Errorf("--exclude: %w", err)
		}
	}
	return out, info, nil
}

// hidden says whether the excludes hide rel and, if so, whether an
// exception may bring back something below it.
func (w *treeWalker) hidden(rel string) (hidden, walkIn bool) {
	if w.excl == nil {
		return false, false
	}
	p := path.Join(w.base, rel)
	if m, err := w.excl.MatchesOrParentMatches(p); err != nil || !m {
		return false, false
	}
	if !w.excl.Exclusions() {
		return true, false
	}
	for _, pat := range w.excl.Patterns() {
		if pat.Exclusion() && mayMatchBelow(pat.String(), p) {
			return true, true
		}
	}
	return true, false
}

// mayMatchBelow says whether pattern may match a path below directory dir:
// it has more components than dir and its first ones match dir's, or a
// "**" comes before it runs out of dir's.
func mayMatchBelow(pattern, dir string) bool {
	dirs := strings.Split(dir, "/")
	for i, c := range strings.Split(pattern, "/") {
		if strings.Contains(c, "**") || i >= len(dirs) {
			return true
		}
		if ok, _ := path.Match(c, dirs[i]); !ok {
			return false
		}
	}
	return false
}

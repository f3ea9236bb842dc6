package build

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// CopySpec is one COPY or ADD instruction, its paths already expanded.
//
// # Trees and paths
//
// SrcRoot and DestRoot are each read as the root directory "/" of a tree:
// every path is resolved inside its tree the way a container would resolve
// it (openat2 RESOLVE_IN_ROOT): an absolute symlink points inside the tree,
// ".." stops at its root, so a hostile image's /usr/local -> ../../.. or
// /etc/passwd -> /../../etc/shadow never leads outside. Below the first
// component Copy never reads or writes by host path: it creates each entry
// relative to its parent directory's descriptor, never through a symlink.
// A source written "../x" is "/x" of SrcRoot (Docker clamps the same way).
//
// # What goes where (the Dockerfile reference, as BuildKit applies it)
//
//   - Sources are expanded first: a wildcard (filepath.Match syntax) matches
//     entries of SrcRoot, in name order; one that matches nothing, or a plain
//     source that names nothing, is an error wrapping ErrSourceNotFound. When
//     more than one source results, Dest must end in "/" (ErrDestNotDirectory).
//   - A directory source: its contents go into Dest, not the directory
//     itself. A file (or a device or fifo) source: it becomes Dest, or
//     Dest/<its base name> when Dest ends in "/" or "/." or names an existing
//     directory. A symlink written as a source is followed (inside SrcRoot);
//     symlinks inside a copied directory are copied as symlinks.
//   - Dest and its missing parents are created with mode 0755 (or Chmod) and
//     owner UID:GID; the directories they name keep their mode and owner when
//     they exist, but Dest takes a copied directory's modification time (as
//     BuildKit does). Symlinks on the way to Dest are followed inside
//     DestRoot, a dangling one by creating its target, as BuildKit's MkdirAll
//     does; so is a last component that is a symlink to a directory.
//   - Every entry copied gets owner UID:GID, the source's permission bits
//     (setuid, setgid and sticky included) unless Chmod is set, and the
//     source's modification time; security.capability and user.* extended
//     attributes are copied where the destination accepts them. A directory
//     of the tree that already exists in the image is merged into and takes
//     the copied directory's mode, owner and time (BuildKit's rule); an
//     existing file or symlink is removed and replaced, never written
//     through; a file never replaces a directory, and a directory replaces a
//     non-directory only with Link: both are errors otherwise.
//   - Hard links are copied as separate files. Sockets are skipped. Fifos and
//     devices are made again with mknod, which needs root.
//   - Excludes are .dockerignore patterns (moby/patternmatcher), matched
//     against paths relative to SrcRoot after symlinks in the source path are
//     followed: what they hide is, for Copy and Checksum, not there at all,
//     and "!" exceptions reach into excluded directories.
//
// # ADD
//
// With Add, a source that is a tar archive (plain, gzip, bzip2 or zstd, told
// by its content, never by its name) is unpacked into Dest (see unpackTar for
// what it refuses); xz is not supported (ErrUnsupportedArchive). Any other
// file is copied. An http:// or https:// source is downloaded (redirects
// followed) and never unpacked: mode 0600 unless Chmod, owner UID:GID,
// modification time from Last-Modified, else the Unix epoch (BuildKit's
// rule, which keeps layers reproducible), named after the last element of
// the URL's path (or "__unnamed__") when Dest is a directory. A status other
// than 2xx is an error wrapping ErrDownload.
//
// # Link
//
// COPY --link copies into a layer of its own, which cannot see the image:
// no symlink of the image is followed on the way to Dest or at its last
// component; each is replaced by a directory (or by the file copied), and a
// copied directory replaces a non-directory. Directories that exist are
// still merged into, with their metadata kept as without Link.
type CopySpec struct {
	SrcRoot  string       // host directory the sources are resolved in: the build context, or another stage's or image's root filesystem
	Sources  []string     // as written in the Dockerfile, relative to SrcRoot ("/" prefix allowed); wildcards; for ADD, http:// and https:// URLs
	Excludes []string     // .dockerignore patterns (see ReadDockerignore); nil excludes nothing
	DestRoot string       // the image's root filesystem, a writable mount
	Dest     string       // absolute path in the image, WORKDIR already joined; a trailing "/" means a directory
	UID, GID int          // owner of everything copied
	Chmod    *os.FileMode // mode of every copied file and directory (os.ModeSetuid and friends, or the raw 0o7000 bits); nil keeps the source's
	Add      bool         // ADD: unpack local tar archives, download URLs
	Link     bool         // COPY --link: never follow the image's symlinks on the way to Dest
	// Chown says --chown was given. Only ADD's archives care: their entries
	// keep the archive's owners (Docker's rule) unless Chown is set or UID or
	// GID is not 0; then UID:GID owns them all.
	Chown bool
}

var (
	// ErrSourceNotFound is wrapped by the error of a source that names
	// nothing in SrcRoot, or only what the excludes hide.
	ErrSourceNotFound = errors.New("file not found in build context or excluded by .dockerignore")
	// ErrDestNotDirectory is wrapped by the error of several sources copied
	// to a Dest that does not end in "/".
	ErrDestNotDirectory = errors.New("the destination must be a directory and end with a /")
	// ErrUnsupportedArchive is wrapped by the error of an ADD source
	// compressed in a format Strata cannot read (xz).
	ErrUnsupportedArchive = errors.New("unsupported archive compression")
	// ErrDownload is wrapped by the error of an ADD URL that answered with a
	// status other than 2xx.
	ErrDownload = errors.New("download failed")
)

// Copy carries out spec in DestRoot and returns how many entries it wrote:
// each file, directory, symlink or node created or replaced, the
// directories made for Dest and an archive's entries included. It stops
// with ctx's error between two entries once ctx is done; what it wrote by
// then stays.
func Copy(ctx context.Context, spec CopySpec) (int, error) {
	p, err := newCopyPlan(spec)
	if err != nil {
		return 0, err
	}
	if spec.DestRoot == "" {
		return 0, fmt.Errorf("%s: no DestRoot", p.op)
	}
	src, err := p.openSrc()
	if err != nil {
		return 0, err
	}
	defer src.close()
	dst, err := openFsRoot(spec.DestRoot)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p.op, err)
	}
	defer dst.close()
	sources, err := p.sources(ctx, src)
	if err != nil {
		return 0, err
	}
	defer closeSources(sources)
	c := &copier{copyPlan: p, src: src, dst: dst}
	for _, s := range sources {
		if err := ctx.Err(); err != nil {
			return c.count, err
		}
		if err := c.copySource(ctx, s); err != nil {
			return c.count, fmt.Errorf("%s %s: %w", p.op, s.written, err)
		}
	}
	return c.count, nil
}

// Checksum returns a digest of everything spec would copy, the build cache
// key of the instruction: Dest, the owner, Chmod, Add, Link and Chown; then,
// for each source in Copy's order, its path in SrcRoot and, for each entry
// it selects (wildcards and excludes applied as Copy applies them), its path
// relative to the source, type, permission bits, content (file bytes and
// size, symlink target, device number) and copied extended attributes. No
// owner and no time of the source counts. A URL counts as the URL and the
// bytes it answers with, downloaded.
func Checksum(ctx context.Context, spec CopySpec) (digest.Digest, error) {
	p, err := newCopyPlan(spec)
	if err != nil {
		return "", err
	}
	src, err := p.openSrc()
	if err != nil {
		return "", err
	}
	defer src.close()
	sources, err := p.sources(ctx, src)
	if err != nil {
		return "", err
	}
	defer closeSources(sources)
	d := digest.Canonical.Digester()
	h := d.Hash()
	p.hashSpec(h)
	for _, s := range sources {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := p.hashSource(ctx, h, src, s); err != nil {
			return "", fmt.Errorf("%s %s: %w", p.op, s.written, err)
		}
	}
	return d.Digest(), nil
}

// ReadDockerignore returns the patterns of contextDir/.dockerignore, as
// moby/patternmatcher's ignorefile reads them, or nil when there is none.
func ReadDockerignore(contextDir string) ([]string, error) {
	f, err := os.Open(filepath.Join(contextDir, ".dockerignore"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return patterns, nil
}

// copyPlan is a CopySpec checked and put in the form the copy works with.
type copyPlan struct {
	CopySpec
	op      string  // "COPY" or "ADD", for messages
	dest    string  // Dest cleaned and relative to DestRoot ("" is its root)
	destDir bool    // Dest names a directory: ends in "/" or "/.", or is the root
	mode    *uint32 // Chmod as chmod(2) takes it
	excl    *patternmatcher.PatternMatcher
}

func newCopyPlan(spec CopySpec) (*copyPlan, error) {
	p := &copyPlan{CopySpec: spec, op: "COPY"}
	if spec.Add {
		p.op = "ADD"
	}
	if len(spec.Sources) == 0 {
		return nil, fmt.Errorf("%s: no source", p.op)
	}
	p.dest = cleanRel(spec.Dest)
	p.destDir = p.dest == "" || spec.Dest == "." || strings.HasSuffix(spec.Dest, "/") || strings.HasSuffix(spec.Dest, "/.")
	if spec.Chmod != nil {
		m := unixMode(*spec.Chmod)
		p.mode = &m
	}
	if len(spec.Excludes) > 0 {
		pm, err := patternmatcher.New(spec.Excludes)
		if err != nil {
			return nil, fmt.Errorf("%s: .dockerignore: %w", p.op, err)
		}
		p.excl = pm
	}
	return p, nil
}

// unixMode turns an os.FileMode into chmod(2)'s bits, taking the special
// bits either as os.ModeSetuid and friends or as the raw octal 0o7000 that
// a parsed "--chmod=4755" gives.
func unixMode(m os.FileMode) uint32 {
	bits := uint32(m.Perm()) | uint32(m)&0o7000
	if m&os.ModeSetuid != 0 {
		bits |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		bits |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		bits |= unix.S_ISVTX
	}
	return bits
}

// cleanRel clamps p to its tree's root and makes it relative: "../x", "/x"
// and "x" are all "x"; the root is "".
func cleanRel(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// openSrc opens SrcRoot, or returns nil when every source is a URL.
func (p *copyPlan) openSrc() (*fsRoot, error) {
	if !slices.ContainsFunc(p.Sources, func(s string) bool { return !p.isURL(s) }) {
		return nil, nil
	}
	if p.SrcRoot == "" {
		return nil, fmt.Errorf("%s: no SrcRoot", p.op)
	}
	r, err := openFsRoot(p.SrcRoot)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.op, err)
	}
	return r, nil
}

func (p *copyPlan) isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

func (p *copyPlan) dirAttrs() newDirAttrs {
	a := newDirAttrs{uid: p.UID, gid: p.GID, mode: 0o755}
	if p.mode != nil {
		a.mode = *p.mode
	}
	return a
}

// entryMetaOf is the metadata a copied entry gets from its source st; f,
// when not nil, is the source open, to read its extended attributes from.
func (p *copyPlan) entryMetaOf(st *unix.Stat_t, f *os.File) (entryMeta, error) {
	m := entryMeta{uid: p.UID, gid: p.GID, mode: st.Mode & 0o7777, mtime: st.Mtim}
	if p.mode != nil {
		m.mode = *p.mode
	}
	if f != nil {
		x, err := readXattrs(int(f.Fd()))
		if err != nil {
			return m, fmt.Errorf("%s: %w", f.Name(), err)
		}
		m.xattrs = x
	}
	return m, nil
}

// copier carries out one Copy.
type copier struct {
	*copyPlan
	src, dst *fsRoot
	count    int
}

func (c *copier) copySource(ctx context.Context, s *copySource) error {
	if s.url != "" {
		return c.download(ctx, s)
	}
	isDir := s.st.Mode&unix.S_IFMT == unix.S_IFDIR
	if c.Add && s.st.Mode&unix.S_IFMT == unix.S_IFREG {
		if done, err := c.unpackSource(ctx, s); done || err != nil {
			return err
		}
	}
	dir, name, err := c.target(isDir, s.base)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if isDir {
		return c.copyTree(ctx, s, dir)
	}
	return c.writeEntry(dir, name, s.node(c.src))
}

// mkdir opens directory rel of the image, making what is missing.
func (c *copier) mkdir(rel string) (int, error) {
	mk := c.dst.mkdirAll
	if c.Link {
		mk = c.dst.mkdirAllNoFollow
	}
	fd, made, err := mk(rel, c.dirAttrs())
	c.count += made
	return fd, err
}

// target says where a source goes: the directory it is written in (an
// O_PATH descriptor the caller closes) and the name it takes there; name is
// "" when a directory source's contents go into dir itself.
func (c *copier) target(srcIsDir bool, base string) (int, string, error) {
	if c.destDir {
		fd, err := c.mkdir(c.dest)
		if err != nil || srcIsDir {
			return fd, "", err
		}
		return fd, base, nil
	}
	into := func(fd int, err error) (int, string, error) {
		if err != nil || srcIsDir {
			return fd, "", err
		}
		return fd, base, nil
	}
	parentRel, last := path.Split(c.dest)
	parent, err := c.mkdir(parentRel)
	if err != nil {
		return -1, "", err
	}
	var st unix.Stat_t
	err = unix.Fstatat(parent, last, &st, unix.AT_SYMLINK_NOFOLLOW)
	typ := st.Mode & unix.S_IFMT
	switch {
	case errors.Is(err, unix.ENOENT):
		if !srcIsDir {
			return parent, last, nil
		}
		return into(c.newDir(parent, last))
	case err != nil:
		unix.Close(parent)
		return -1, "", &os.PathError{Op: "lstat", Path: "/" + c.dest, Err: err}
	case typ == unix.S_IFDIR:
		fd, err := openDirAt(parent, last, unix.O_PATH)
		unix.Close(parent)
		return into(fd, err)
	case typ == unix.S_IFLNK && !c.Link:
		if fd, err := c.dst.open(c.dest, unix.O_PATH|unix.O_DIRECTORY); err == nil {
			unix.Close(parent)
			return into(fd, nil)
		}
	}
	if !srcIsDir {
		return parent, last, nil // writeEntry replaces it
	}
	if typ != unix.S_IFLNK && !c.Link {
		unix.Close(parent)
		return -1, "", &os.PathError{Op: "cannot copy a directory to non-directory", Path: "/" + c.dest, Err: unix.ENOTDIR}
	}
	if err := unix.Unlinkat(parent, last, 0); err != nil {
		unix.Close(parent)
		return -1, "", &os.PathError{Op: "unlink", Path: "/" + c.dest, Err: err}
	}
	return into(c.newDir(parent, last))
}

// newDir makes directory name in parent, which it closes, for Dest.
func (c *copier) newDir(parent int, name string) (int, error) {
	defer unix.Close(parent)
	if err := unix.Mkdirat(parent, name, 0o700); err != nil {
		return -1, &os.PathError{Op: "mkdir", Path: name, Err: err}
	}
	c.count++
	if err := c.dirAttrs().apply(parent, name); err != nil {
		return -1, err
	}
	return openDirAt(parent, name, unix.O_PATH)
}

// copyTree copies the contents of directory source s into dest.
func (c *copier) copyTree(ctx context.Context, s *copySource, dest int) error {
	fd, err := unix.Openat(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.written, Err: err}
	}
	dir := os.NewFile(uintptr(fd), s.written)
	defer dir.Close()
	w := &treeWriter{c: c, stack: []treeDir{{fd: dest}}}
	walk := &treeWalker{ctx: ctx, excl: c.excl, base: s.real, visit: w.visit}
	if err := walk.walk(dir, ""); err != nil {
		for _, d := range w.stack[1:] {
			unix.Close(d.fd)
		}
		return err
	}
	return setTimes(dest, ".", s.st.Mtim)
}

// writeEntry writes non-directory n as name in dir, replacing what is there
// unless it is a directory.
func (c *copier) writeEntry(dir int, name string, n *srcNode) error {
	var err error
	switch n.st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		err = c.writeRegularFrom(dir, name, n)
	case unix.S_IFLNK:
		target, rerr := readlinkAt(n.dir, n.name)
		if rerr != nil {
			return rerr
		}
		m, _ := c.entryMetaOf(&n.st, nil)
		err = writeSymlink(dir, name, target, m)
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		m, _ := c.entryMetaOf(&n.st, nil)
		err = writeNode(dir, name, n.st.Mode&unix.S_IFMT, int(n.st.Rdev), m)
	default:
		return nil // sockets are not copied
	}
	if err != nil {
		return err
	}
	c.count++
	return nil
}

func (c *copier) writeRegularFrom(dir int, name string, n *srcNode) error {
	in, err := n.open()
	if err != nil {
		return err
	}
	defer in.Close()
	m, err := c.entryMetaOf(&n.st, in)
	if err != nil {
		return err
	}
	return writeRegular(dir, name, in, m)
}

// treeWriter writes what a treeWalker visits below a destination directory.
type treeWriter struct {
	c     *copier
	stack []treeDir // the destination directories open, innermost last; the first is not the writer's
}

type treeDir struct {
	fd    int
	mtime unix.Timespec
}

func (w *treeWriter) visit(n *srcNode, leaving bool) error {
	top := w.stack[len(w.stack)-1]
	if leaving {
		w.stack = w.stack[:len(w.stack)-1]
		defer unix.Close(top.fd)
		return setTimes(top.fd, ".", top.mtime)
	}
	if n.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return w.c.writeEntry(top.fd, n.name, n)
	}
	fd, err := w.dir(top.fd, n)
	if err != nil {
		return err
	}
	w.stack = append(w.stack, treeDir{fd: fd, mtime: n.st.Mtim})
	return nil
}

// dir makes or merges into the directory that n becomes in parent.
func (w *treeWriter) dir(parent int, n *srcNode) (int, error) {
	var st unix.Stat_t
	err := unix.Fstatat(parent, n.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		err = unix.Mkdirat(parent, n.name, 0o700)
	case err != nil:
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
	case !w.c.Link:
		return -1, &os.PathError{Op: "cannot copy a directory to non-directory", Path: n.rel, Err: unix.ENOTDIR}
	default:
		if err = unix.Unlinkat(parent, n.name, 0); err == nil {
			err = unix.Mkdirat(parent, n.name, 0o700)
		}
	}
	if err != nil {
		return -1, &os.PathError{Op: "mkdir", Path: n.rel, Err: err}
	}
	fd, err := openDirAt(parent, n.name, unix.O_RDONLY)
	if err != nil {
		return -1, err
	}
	m, err := w.c.entryMetaOf(&n.st, n.file)
	if err == nil {
		err = m.applyFd(fd)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	w.c.count++
	return fd, nil
}

// download writes ADD URL s to its destination.
func (c *copier) download(ctx context.Context, s *copySource) error {
	resp, err := httpGet(ctx, s.url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dir, name, err := c.target(false, s.base)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	m := entryMeta{uid: c.UID, gid: c.GID, mode: 0o600, mtime: unix.Timespec{}}
	if c.mode != nil {
		m.mode = *c.mode
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		m.mtime = unix.NsecToTimespec(t.UnixNano())
	}
	if err := writeRegular(dir, name, resp.Body, m); err != nil {
		return fmt.Errorf("%s: %w", redactURL(s.url), err)
	}
	c.count++
	return nil
}

// httpGet GETs rawURL, following redirects, and fails on a status other
// than 2xx.
func httpGet(ctx context.Context, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: GET %s: %s", ErrDownload, redactURL(rawURL), resp.Status)
	}
	return resp, nil
}

func redactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// urlFileName is the name an ADD URL takes in a directory: the last
// element of its path, as BuildKit names it.
func urlFileName(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "__unnamed__"
	}
	switch base := path.Base(u.Path); base {
	case ".", "..", "/", "":
		return "__unnamed__"
	default:
		return base
	}
}

func (p *copyPlan) hashSpec(h hash.Hash) {
	fmt.Fprintf(h, "strata build copy v1\ndest %q dir=%t owner=%d:%d add=%t link=%t chown=%t", p.dest, p.destDir, p.UID, p.GID, p.Add, p.Link, p.Chown)
	if p.mode != nil {
		fmt.Fprintf(h, " chmod=%o", *p.mode)
	}
	fmt.Fprintln(h)
}

func (p *copyPlan) hashSource(ctx context.Context, h hash.Hash, src *fsRoot, s *copySource) error {
	if s.url != "" {
		resp, err := httpGet(ctx, s.url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body := sha256.New()
		size, err := io.Copy(body, resp.Body)
		if err != nil {
			return fmt.Errorf("GET %s: %w", redactURL(s.url), err)
		}
		fmt.Fprintf(h, "url %q %d %x\n", s.url, size, body.Sum(nil))
		return nil
	}
	fmt.Fprintf(h, "source %q\n", s.rel)
	if s.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return p.hashEntry(h, s.node(src))
	}
	fd, err := unix.Openat(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: s.written, Err: err}
	}
	dir := os.NewFile(uintptr(fd), s.written)
	defer dir.Close()
	walk := &treeWalker{ctx: ctx, excl: p.excl, base: s.real, visit: func(n *srcNode, leaving bool) error {
		if leaving {
			return nil
		}
		return p.hashEntry(h, n)
	}}
	return walk.walk(dir, "")
}

// hashEntry writes one line for n: kind, path, permission bits, content.
func (p *copyPlan) hashEntry(h hash.Hash, n *srcNode) error {
	typ := n.st.Mode & unix.S_IFMT
	fmt.Fprintf(h, "%o %q %o", typ, n.rel, n.st.Mode&0o7777)
	var xattrFd = -1
	switch typ {
	case unix.S_IFREG:
		f, err := n.open()
		if err != nil {
			return err
		}
		defer f.Close()
		body := sha256.New()
		size, err := io.Copy(body, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, " %d %x", size, body.Sum(nil))
		xattrFd = int(f.Fd())
	case unix.S_IFLNK:
		target, err := readlinkAt(n.dir, n.name)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, " %q", target)
	case unix.S_IFCHR, unix.S_IFBLK:
		fmt.Fprintf(h, " %d", n.st.Rdev)
	case unix.S_IFDIR:
		if n.file != nil {
			xattrFd = int(n.file.Fd())
		}
	}
	if xattrFd >= 0 {
		xs, err := readXattrs(xattrFd)
		if err != nil {
			return err
		}
		for _, x := range xs {
			fmt.Fprintf(h, " %q=%x", x.name, x.value)
		}
	}
	fmt.Fprintln(h)
	return nil
}

// timespec is t as utimensat(2) takes it.
func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

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

// node is s as a srcNode, reopened from src to be read.
func (s *copySource) node(src *fsRoot) *srcNode {
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
		if !hasWildcards(rel) {
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
		matches, err := src.glob(rel)
		if err != nil {
			return out, fmt.Errorf("%s failed: %s: %w", p.op, written, err)
		}
		found := false
		for _, m := range matches {
			s, err := p.resolve(ctx, src, m, written)
			if err != nil {
				return out, err
			}
			if s != nil {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return out, fmt.Errorf("%s failed: no source files were specified: %s matches nothing: %w", p.op, written, ErrSourceNotFound)
		}
	}
	if len(out) > 1 && !p.destDir {
		return out, fmt.Errorf("When using %s with more than one source file, %w", p.op, ErrDestNotDirectory)
	}
	return out, nil
}

// resolve opens rel in src, following symlinks inside it; it returns nil
// when rel names nothing or what the excludes hide.
func (p *copyPlan) resolve(ctx context.Context, src *fsRoot, rel, written string) (*copySource, error) {
	fd, err := src.open(rel, unix.O_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
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
	switch err := walk.walk(dir, ""); {
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
	r.real, _ = os.Readlink(fdPath(fd))
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
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
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

// relOf names where fd, opened in r, is: its path relative to r's root.
func (r *fsRoot) relOf(fd int) (string, bool) {
	p, err := os.Readlink(fdPath(fd))
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
	comps := splitPath(rel)
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
			next := splitPath(target)
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
	for _, name := range splitPath(rel) {
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

// splitPath splits p into its components, dropping empty ones and "." but
// keeping "..", which only a lookup can resolve.
func splitPath(p string) []string {
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
	visit   func(n *srcNode, leaving bool) error
	pending []*srcNode // excluded directories walked into and not visited yet
}

func (w *treeWalker) walk(dir *os.File, rel string) error {
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
		switch {
		case typ == unix.S_IFDIR && (!hidden || walkIn):
			err = w.walkDir(n, hidden)
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

func (w *treeWalker) walkDir(n *srcNode, hidden bool) error {
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
	if err := w.walk(n.file, n.rel); err != nil {
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

// entryMeta is what an entry written gets besides its content.
type entryMeta struct {
	uid, gid int
	mode     uint32 // permission bits with setuid, setgid and sticky; not for symlinks
	mtime    unix.Timespec
	xattrs   []xattr
}

type xattr struct {
	name  string
	value []byte
}

// applyFd gives open file or directory fd the owner, mode and extended
// attributes; chown first, as it clears setuid and capabilities.
func (m entryMeta) applyFd(fd int) error {
	if err := unix.Fchown(fd, m.uid, m.gid); err != nil {
		return os.NewSyscallError("fchown", err)
	}
	if err := unix.Fchmod(fd, m.mode); err != nil {
		return os.NewSyscallError("fchmod", err)
	}
	for _, x := range m.xattrs {
		err := unix.Fsetxattr(fd, x.name, x.value, 0)
		if err != nil && err != unix.ENOTSUP && err != unix.EPERM {
			return fmt.Errorf("setxattr %s: %w", x.name, err)
		}
	}
	return nil
}

// setTimes sets name's access and modification times (never a symlink's
// target's).
func setTimes(dir int, name string, mtime unix.Timespec) error {
	if err := unix.UtimesNanoAt(dir, name, []unix.Timespec{mtime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: name, Err: err}
	}
	return nil
}

// removeNonDir makes room for a new entry name in dir: it removes a file,
// symlink or node there, and refuses to replace a directory.
func removeNonDir(dir int, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return &os.PathError{Op: "lstat", Path: name, Err: err}
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return &os.PathError{Op: "cannot replace a directory with a non-directory", Path: name, Err: unix.EISDIR}
	}
	if err := unix.Unlinkat(dir, name, 0); err != nil {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// writeRegular writes r's bytes as regular file name in dir, with m.
func writeRegular(dir int, name string, r io.Reader, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = io.Copy(f, r)
	if err == nil {
		err = m.applyFd(fd)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = setTimes(dir, name, m.mtime)
	}
	return err
}

// writeSymlink makes name in dir a symlink to target, with m's owner and
// time.
func writeSymlink(dir int, name, target string, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, dir, name); err != nil {
		return &os.PathError{Op: "symlink", Path: name, Err: err}
	}
	if err := unix.Fchownat(dir, name, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "lchown", Path: name, Err: err}
	}
	return setTimes(dir, name, m.mtime)
}

// writeNode makes name in dir a fifo or device of type typ (S_IFIFO,
// S_IFCHR, S_IFBLK), with m; devices need root.
func writeNode(dir int, name string, typ uint32, rdev int, m entryMeta) error {
	if err := removeNonDir(dir, name); err != nil {
		return err
	}
	if err := unix.Mknodat(dir, name, typ|m.mode&0o777, rdev); err != nil {
		return &os.PathError{Op: "mknod", Path: name, Err: err}
	}
	if err := unix.Fchownat(dir, name, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "chown", Path: name, Err: err}
	}
	// Just made by mknod, name is no symlink for fchmodat to follow.
	if err := unix.Fchmodat(dir, name, m.mode, 0); err != nil {
		return &os.PathError{Op: "chmod", Path: name, Err: err}
	}
	return setTimes(dir, name, m.mtime)
}

// keepXattr says whether extended attribute name is copied: file
// capabilities and user attributes; never the security labels or ACLs of
// the host.
func keepXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.")
}

// readXattrs returns the extended attributes of fd that keepXattr keeps,
// in name order; none when the file system has none.
func readXattrs(fd int) ([]xattr, error) {
	size, err := unix.Flistxattr(fd, nil)
	if err == unix.ENOTSUP || size == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, os.NewSyscallError("flistxattr", err)
	}
	buf := make([]byte, size)
	if size, err = unix.Flistxattr(fd, buf); err != nil {
		return nil, os.NewSyscallError("flistxattr", err)
	}
	var out []xattr
	for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
		if !keepXattr(name) {
			continue
		}
		value, err := getXattr(fd, name)
		if err == unix.ENODATA {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		out = append(out, xattr{name: name, value: value})
	}
	slices.SortFunc(out, func(a, b xattr) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

func getXattr(fd int, name string) ([]byte, error) {
	for {
		size, err := unix.Fgetxattr(fd, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := unix.Fgetxattr(fd, name, buf)
		if err == unix.ERANGE {
			continue // it grew in between
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

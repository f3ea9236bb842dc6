package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	mode "github.com/tonistiigi/dchapes-mode"
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
//     entries of SrcRoot, in name order; one that matches nothing adds
//     nothing (BuildKit's AllowEmptyWildcard), while a plain source that
//     names nothing is an error wrapping ErrSourceNotFound. When
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
//     does; so is a last component that is a symlink to a directory, and,
//     for a directory source, a dangling one (buildah and BuildKit agree). A
//     last component that is any other symlink is replaced, by the file
//     copied or by the directory a directory source makes (buildah's rule;
//     BuildKit writes a file through a symlink to a file, and buildah and
//     BuildKit differ on a file through a dangling one); a file there is
//     replaced by a file, and is an error for a directory source (ENOTDIR).
//   - Every entry copied gets owner UID:GID (its own with KeepOwners), the
//     source's permission bits (setuid, setgid and sticky included) unless
//     Chmod is set, and the source's modification time; security.capability
//     and user.* extended attributes are copied where the destination accepts
//     them. A directory of the tree that already exists in the image is merged
//     into and takes the copied directory's mode, owner and time (BuildKit's
//     rule); an existing file or symlink is removed and replaced, never
//     written through; below Dest, a file never replaces a directory (EISDIR),
//     and a directory replaces a non-directory only with Link (ENOTDIR
//     otherwise).
//   - Regular files that are hard links of one another stay hard links of
//     one another when they are copied as part of one source directory, as
//     buildah and BuildKit keep them; files named by different sources (or
//     matched by one wildcard: buildah copies each match on its own) are
//     files of their own. Sockets are skipped. Fifos and devices are made
//     again with mknod, which needs root.
//   - Excludes are .dockerignore patterns (moby/patternmatcher), matched
//     against paths relative to SrcRoot after symlinks in the source path are
//     followed: what they hide is, for Copy and Checksum, not there at all,
//     and "!" exceptions reach into excluded directories.
//
// # ADD
//
// With Add, a source that is a tar archive (plain, gzip, bzip2, xz or zstd,
// told by its content, never by its name) is unpacked into Dest (see
// unpackTar for what it refuses); xz needs the xz command
// (ErrUnsupportedArchive without it). Any other file is copied. An http://
// or https:// source is downloaded (redirects followed) and never unpacked:
// mode 0600 unless Chmod, owner UID:GID, modification time from
// Last-Modified, else the Unix epoch (BuildKit's rule, which keeps layers
// reproducible), named after the last element of the URL's path (or
// "__unnamed__") when Dest is a directory. A status other than 2xx is an
// error wrapping ErrDownload.
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
	// ChmodSymbolic is a symbolic --chmod ("u+x", "go=rX", ...), applied
	// to each copied entry's own mode as BuildKit applies one; exclusive
	// with Chmod. Directories made on the way to Dest stay 0755.
	ChmodSymbolic string
	// SourceExcludes are COPY --exclude and ADD --exclude patterns, matched
	// as BuildKit matches them: against the paths below each directory
	// source (relative to it), the later "!" exceptions bringing back only
	// what an earlier pattern hid; a source named itself is never hidden.
	SourceExcludes []string
	// KeepOwners is COPY --from without --chown: every entry copied keeps
	// the owner it has in SrcRoot, as BuildKit and buildah copy from a
	// stage or an image; UID:GID owns only the directories made for Dest.
	KeepOwners bool
	// Parents is COPY --parents: each source goes below Dest (a directory)
	// at its own path in SrcRoot, or at what follows the last "/./" written
	// in it, as BuildKit copies them; the directories on the way are made
	// as Dest's missing parents are.
	Parents bool
	// Checksum is ADD --checksum: the digest the content of every source,
	// which must all be URLs, must have (ErrChecksum otherwise; nothing of
	// such a download stays).
	Checksum digest.Digest
	// Downloads, when set, keeps the ADD URL downloads Checksum makes for
	// the cache key, and Copy writes those bytes rather than asking again:
	// a server may answer the next request otherwise, and the layer must
	// hold what its key was made of. Nil: each downloads on its own.
	Downloads *Downloads
}

// Downloads holds the ADD URL downloads of one instruction (see
// CopySpec.Downloads), as files in Dir; Remove removes them.
type Downloads struct {
	Dir string
	mu  sync.Mutex
	got map[string]download
}

type download struct {
	path         string // the body, in Dir
	lastModified string // the Last-Modified header, which sets the file's time
}

func (d *Downloads) get(url string) (download, bool) {
	if d == nil {
		return download{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	dl, ok := d.got[url]
	return dl, ok
}

func (d *Downloads) put(url string, dl download) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.got == nil {
		d.got = map[string]download{}
	}
	if old, ok := d.got[url]; ok {
		os.Remove(old.path)
	}
	d.got[url] = dl
}

// Remove removes the downloads' files.
func (d *Downloads) Remove() {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dl := range d.got {
		os.Remove(dl.path)
	}
	d.got = nil
}

var (
	// ErrSourceNotFound is wrapped by the error of a source that names
	// nothing in SrcRoot, or only what the excludes hide.
	ErrSourceNotFound = errors.New("file not found in build context or excluded by .dockerignore")
	// ErrDestNotDirectory is wrapped by the error of several sources copied
	// to a Dest that does not end in "/".
	ErrDestNotDirectory = errors.New("the destination must be a directory and end with a /")
	// ErrUnsupportedArchive is wrapped by the error of an ADD source
	// compressed in a format Strata cannot read here (xz without the xz
	// command).
	ErrUnsupportedArchive = errors.New("unsupported archive compression")
	// ErrDownload is wrapped by the error of an ADD URL that answered with a
	// status other than 2xx.
	ErrDownload = errors.New("download failed")
	// ErrChecksum is wrapped by the error of an ADD --checksum whose URL
	// answered with other content.
	ErrChecksum = errors.New("checksum mismatch")
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
		c.linked = nil // hard links are kept within one source (see CopySpec)
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
// size, symlink target, device number), which earlier name of the source
// a hard link shares its file with, and copied extended attributes. No
// time of the source counts, and no owner but with KeepOwners. A URL
// counts as the URL, the bytes it answers with and its Last-Modified (the
// file's time), downloaded (and kept in spec.Downloads for Copy); with
// --checksum, as the URL and the checksum, without a download.
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

// FindIgnoreFile returns the ignore file of a build of contextDir whose
// Dockerfile is the file dockerfile ("" when it comes from standard input):
// the first that exists of dockerfile+".dockerignore" (a Dockerfile's own
// ignore file, next to it, as BuildKit and docker build take it),
// contextDir/.containerignore (buildah's name, which buildah prefers) and
// contextDir/.dockerignore; "" when there is none.
func FindIgnoreFile(contextDir, dockerfile string) string {
	var candidates []string
	if dockerfile != "" {
		candidates = append(candidates, dockerfile+".dockerignore")
	}
	candidates = append(candidates, filepath.Join(contextDir, ".containerignore"), filepath.Join(contextDir, ".dockerignore"))
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c
		}
	}
	return ""
}

// ReadIgnoreFile returns the patterns of ignore file name, as
// moby/patternmatcher's ignorefile reads them; nil for "".
func ReadIgnoreFile(name string) ([]string, error) {
	if name == "" {
		return nil, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIgnoreFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxIgnoreFile {
		return nil, fmt.Errorf("%s is over %d bytes", name, maxIgnoreFile)
	}
	patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return patterns, nil
}

// maxIgnoreFile bounds what is read of an ignore file.
const maxIgnoreFile = 4 << 20

// copyPlan is a CopySpec checked and put in the form the copy works with.
type copyPlan struct {
	CopySpec
	op      string  // "COPY" or "ADD", for messages
	dest    string  // Dest cleaned and relative to DestRoot ("" is its root)
	destDir bool    // Dest names a directory: ends in "/" or "/.", or is the root
	mode    *uint32 // Chmod as chmod(2) takes it
	modeSet *mode.Set
	excl    *patternmatcher.PatternMatcher
	srcExcl *patternmatcher.PatternMatcher // SourceExcludes
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
	p.destDir = p.dest == "" || spec.Dest == "." || strings.HasSuffix(spec.Dest, "/") || strings.HasSuffix(spec.Dest, "/.") || spec.Parents
	if spec.Chmod != nil {
		m := unixMode(*spec.Chmod)
		p.mode = &m
	}
	if spec.ChmodSymbolic != "" {
		if spec.Chmod != nil {
			return nil, fmt.Errorf("%s: a numeric and a symbolic --chmod", p.op)
		}
		set, err := mode.ParseWithUmask(spec.ChmodSymbolic, 0) // as BuildKit's copy parses it
		if err != nil {
			return nil, fmt.Errorf("%s: --chmod=%s: %w", p.op, spec.ChmodSymbolic, err)
		}
		p.modeSet = &set
	}
	if len(spec.Excludes) > 0 {
		pm, err := patternmatcher.New(spec.Excludes)
		if err != nil {
			return nil, fmt.Errorf("%s: .dockerignore: %w", p.op, err)
		}
		p.excl = pm
	}
	if spec.Checksum != "" {
		if err := spec.Checksum.Validate(); err != nil {
			return nil, fmt.Errorf("%s --checksum=%s: %w", p.op, spec.Checksum, err)
		}
		for _, src := range spec.Sources {
			if !p.isURL(src) {
				return nil, fmt.Errorf("%s --checksum: %s is not an http:// or https:// URL; only downloads are checked", p.op, src)
			}
		}
	}
	if len(spec.SourceExcludes) > 0 {
		pm, err := patternmatcher.New(spec.SourceExcludes)
		if err != nil {
			return nil, fmt.Errorf("%s --exclude: %w", p.op, err)
		}
		p.srcExcl = pm
	}
	return p, nil
}

// walker walks directory source s with the plan's excludes, visiting with
// visit. Under COPY --parents the --exclude patterns see paths from the
// source's pivot (see parentsPivot), as BuildKit matches them from the
// directory it copies; otherwise from s itself.
func (p *copyPlan) walker(ctx context.Context, s *copySource, visit func(n *srcNode, leaving bool) error) *treeWalker {
	w := &treeWalker{ctx: ctx, excl: p.excl, base: s.real, srcExcl: p.srcExcl, visit: visit}
	if p.Parents {
		w.srcExclBase = parentsKept(s)
	}
	return w
}

// walk walks directory source s, open as dir, with w.
func (w *treeWalker) walkSource(dir *os.File) error {
	_, info, err := matchPath(w.srcExcl, w.srcExclBase)
	if err != nil {
		return err
	}
	return w.walk(dir, "", info)
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

// dirAttrs are the attributes of a directory the copy makes for a
// directory source's contents: --chmod's mode, as a copied directory's.
func (p *copyPlan) dirAttrs() newDirAttrs {
	a := newDirAttrs{uid: p.UID, gid: p.GID, mode: 0o755}
	if p.mode != nil {
		a.mode = *p.mode
	}
	return a
}

// parentAttrs are those of a directory the copy makes on the way to where
// a source goes: --chmod's permission bits, but not its setuid, setgid or
// sticky bit, which BuildKit leaves to what is copied (a setgid parent
// would pass its group on to whatever a later step makes in it).
func (p *copyPlan) parentAttrs() newDirAttrs {
	a := p.dirAttrs()
	a.mode &= 0o777
	return a
}

// entryMetaOf is the metadata a copied entry gets from its source st; f,
// when not nil, is the source open, to read its extended attributes from.
func (p *copyPlan) entryMetaOf(st *unix.Stat_t, f *os.File) (entryMeta, error) {
	m := entryMeta{uid: p.UID, gid: p.GID, mode: st.Mode & 0o7777, mtime: st.Mtim}
	if p.KeepOwners {
		m.uid, m.gid = int(st.Uid), int(st.Gid)
	}
	if p.mode != nil {
		m.mode = *p.mode
	}
	if p.modeSet != nil {
		m.mode = unixMode(p.modeSet.Apply(fileMode(st.Mode)))
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
	// linked maps each source file with more than one name, by its source
	// inode, to where its first name was copied.
	linked map[srcInode]copiedFile
}

type srcInode struct{ dev, ino uint64 }

// copiedFile is a regular file the copy wrote: its path below DestRoot and
// its inode there, to tell whether that path still names it.
type copiedFile struct {
	rel      string
	dev, ino uint64
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
	dir, name, err := c.target(isDir, s.base, s.st.Mode)
	if c.Parents {
		dir, name, err = c.parentsTarget(isDir, s)
	}
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if isDir {
		return c.copyTree(ctx, s, dir)
	}
	return c.writeEntry(dir, name, s.node(c.src))
}

// parentsTarget is target for COPY --parents: s's kept path (parentsKept)
// below Dest. The directories on it that are missing are made with the
// mode of the source directory each stands for (or Chmod) and owner
// UID:GID, as BuildKit makes them.
func (c *copier) parentsTarget(srcIsDir bool, s *copySource) (int, string, error) {
	kept := parentsKept(s)
	dirs, name := kept, ""
	if !srcIsDir {
		dirs, name = path.Split(kept)
		if name == "" {
			name = s.base
		}
	}
	dirs = strings.TrimSuffix(dirs, "/")
	fd, err := c.mkdir(c.dest)
	if err != nil || dirs == "" {
		return fd, name, err
	}
	srcDir := strings.TrimSuffix(strings.TrimSuffix(s.rel, kept), "/") // where kept starts in SrcRoot
	comps := strings.Split(dirs, "/")
	for i := range comps {
		unix.Close(fd)
		a := c.parentAttrs()
		if c.mode == nil {
			if m, ok := c.srcDirMode(path.Join(srcDir, path.Join(comps[:i+1]...))); ok {
				a.mode = m
			}
		}
		if fd, err = c.mkdirWith(path.Join(c.dest, path.Join(comps[:i+1]...)), a); err != nil {
			return -1, "", err
		}
	}
	return fd, name, nil
}

// srcDirMode is the permission bits of directory rel of SrcRoot.
func (c *copier) srcDirMode(rel string) (uint32, bool) {
	fd, err := c.src.open(rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	return st.Mode & 0o7777, true
}

// parentsKept is the path of source s that COPY --parents keeps: its path
// below its pivot (parentsPivot).
func parentsKept(s *copySource) string {
	pivot, _ := parentsPivot(s.written)
	if pivot == "" {
		return s.rel
	}
	if kept, ok := strings.CutPrefix(s.rel, pivot+"/"); ok {
		return kept
	}
	if s.rel == pivot {
		return ""
	}
	return s.rel
}

// parentsPivot splits a COPY --parents source as written into its pivot,
// the directory of SrcRoot the kept paths start from ("" for SrcRoot), and
// the pattern below it: the source is cut at its first "/./", as BuildKit
// cuts it; a source without one has SrcRoot as its pivot.
func parentsPivot(written string) (pivot, pattern string) {
	parent, pattern, ok := strings.Cut(written, "/./")
	if !ok {
		return "", cleanRel(written)
	}
	return cleanRel(parent), cleanRel(pattern)
}

// mkdir opens directory rel of the image, making what is missing.
func (c *copier) mkdir(rel string) (int, error) {
	return c.mkdirWith(rel, c.parentAttrs())
}

// mkdirWith is mkdir with the directories it makes given a.
func (c *copier) mkdirWith(rel string, a newDirAttrs) (int, error) {
	mk := c.dst.mkdirAll
	if c.Link {
		mk = c.dst.mkdirAllNoFollow
	}
	fd, made, err := mk(rel, a)
	c.count += made
	return fd, err
}

// target says where a source goes: the directory it is written in (an
// O_PATH descriptor the caller closes) and the name it takes there; name is
// "" when a directory source's contents go into dir itself. srcMode is the
// source's stat(2) mode.
func (c *copier) target(srcIsDir bool, base string, srcMode uint32) (int, string, error) {
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
		return into(c.newDir(parent, last, srcMode))
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
		if srcIsDir && c.dangling(c.dest) {
			// Followed, its target made inside DestRoot, as buildah and
			// BuildKit both do for a directory source.
			unix.Close(parent)
			return into(c.mkdir(c.dest))
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
	return into(c.newDir(parent, last, srcMode))
}

// dangling says whether rel, in the destination, is a symlink whose
// target (resolved inside DestRoot) does not exist.
func (c *copier) dangling(rel string) bool {
	fd, err := c.dst.open(rel, unix.O_PATH)
	if err == nil {
		unix.Close(fd)
		return false
	}
	return errors.Is(err, unix.ENOENT)
}

// newDir makes directory name in parent, which it closes, for Dest, where
// the contents of a source directory of mode srcMode go. With a symbolic
// --chmod it takes that mode, the set applied, as BuildKit makes it.
func (c *copier) newDir(parent int, name string, srcMode uint32) (int, error) {
	defer unix.Close(parent)
	if err := unix.Mkdirat(parent, name, 0o700); err != nil {
		return -1, &os.PathError{Op: "mkdir", Path: name, Err: err}
	}
	c.count++
	a := c.dirAttrs()
	if c.modeSet != nil {
		a.mode = unixMode(c.modeSet.Apply(fileMode(srcMode)))
	}
	if err := a.apply(parent, name); err != nil {
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
	if err := c.walker(ctx, s, w.visit).walkSource(dir); err != nil {
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
	key := srcInode{uint64(n.st.Dev), n.st.Ino}
	if n.st.Nlink > 1 {
		if done, err := c.linkCopied(dir, name, key); done || err != nil {
			return err
		}
	}
	in, err := n.open()
	if err != nil {
		return err
	}
	defer in.Close()
	m, err := c.entryMetaOf(&n.st, in)
	if err != nil {
		return err
	}
	if err := writeRegular(dir, name, in, m); err != nil {
		return err
	}
	if n.st.Nlink > 1 {
		c.noteCopied(dir, name, key)
	}
	return nil
}

// linkCopied makes name in dir a hard link of the file an earlier name of
// source inode key was copied to, when there is one and its path still
// names it (a later entry of the copy may have replaced it). done is false
// when the file is to be written instead: no earlier copy, or a link the
// file system refuses (too many links).
func (c *copier) linkCopied(dir int, name string, key srcInode) (done bool, err error) {
	first, ok := c.linked[key]
	if !ok {
		return false, nil
	}
	parent, err := c.dst.open(path.Dir(first.rel), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return false, nil
	}
	defer unix.Close(parent)
	base := path.Base(first.rel)
	var st unix.Stat_t
	if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
		uint64(st.Dev) != first.dev || st.Ino != first.ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, nil
	}
	if err := removeNonDir(dir, name); err != nil {
		return false, err
	}
	if err := unix.Linkat(parent, base, dir, name, 0); err != nil {
		if errors.Is(err, unix.EMLINK) {
			return false, nil
		}
		return false, &os.PathError{Op: "link", Path: name, Err: err}
	}
	return true, nil
}

// noteCopied remembers that source inode key was just copied to name in
// dir: its later names link to that file (the first copy, unless it was
// replaced or has all the links it may have).
func (c *copier) noteCopied(dir int, name string, key srcInode) {
	rel, ok := c.dst.relOf(dir)
	var st unix.Stat_t
	if !ok || unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return
	}
	if c.linked == nil {
		c.linked = map[srcInode]copiedFile{}
	}
	c.linked[key] = copiedFile{rel: path.Join(rel, name), dev: uint64(st.Dev), ino: st.Ino}
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

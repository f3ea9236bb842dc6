package build

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// What ADD does with a local tar archive, as Docker does it unless said:
//
//   - The archive is told by its content: a gzip, bzip2, xz or zstd stream,
//     or none, whose first tar header reads. xz is read by the xz command,
//     as Docker reads it (see xzDecompress).
//   - Entries are unpacked below Dest, which is made like any destination
//     directory (slash or not). A name is taken relative to Dest even when
//     absolute ("/etc/x" is Dest/etc/x), and ".." at the top stays there
//     ("../x" is Dest/x), as BuildKit's and docker's unpacks make it (in a
//     chroot at Dest) and buildah's. Every path is then resolved with Dest
//     as its root, so a
//     symlink entry (or one of the image below Dest) pointing anywhere,
//     "/" or "../../..", leads back inside Dest when later entries go
//     through it: nothing is ever written outside Dest. Symlink targets
//     themselves are written as they are.
//   - Entries keep the archive's owner unless --chown (see CopySpec.Chown),
//     their mode bits (setuid, setgid and sticky too; Chmod does not apply,
//     as in BuildKit), modification times and their security.capability and
//     user.* extended attributes (PAX SCHILY.xattr records).
//   - The entry for Dest itself ("./") changes nothing: Dest keeps its
//     mode and owner (Docker would apply the archive's).
//   - An entry replaces a file, symlink or node; a directory entry merges
//     into an existing directory and takes its metadata; a non-directory
//     entry replaces a directory there, and everything in it, as Docker's
//     and BuildKit's unpacking (and buildah's) do: a usrmerge archive's
//     "lib -> usr/lib" over a base's /lib directory.
//   - Hard links are made inside Dest, to an earlier entry or a file there,
//     and give it the link entry's owner, mode and time, as containerd's and
//     buildah's unpacking do; fifos and devices with mknod (root only).
//     Whiteout files (.wh.*) are plain files. Parents missing are made 0755
//     and root's (BuildKit's rule). --chmod applies to nothing of an
//     archive, Dest included.

// archiveMagic are the first bytes of the compressed streams ADD knows.
var (
	gzipMagic  = []byte{0x1f, 0x8b}
	bzip2Magic = []byte("BZh")
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	zstdMagic  = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompressArchive returns r's content, decompressed when its first bytes say it
// is compressed; r is read from where it is.
func decompressArchive(r io.Reader) (io.ReadCloser, error) {
	br := newPeekReader(r, len(xzMagic))
	head := br.head
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return gzip.NewReader(br)
	case bytes.HasPrefix(head, bzip2Magic):
		return io.NopCloser(bzip2.NewReader(br)), nil
	case bytes.HasPrefix(head, zstdMagic):
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(head, xzMagic):
		return xzDecompress(br)
	default:
		return io.NopCloser(br), nil
	}
}

// peekReader is a reader whose first bytes were read ahead into head.
type peekReader struct {
	head []byte
	rest io.Reader
}

func newPeekReader(r io.Reader, n int) *peekReader {
	head := make([]byte, n)
	got, _ := io.ReadFull(r, head)
	head = head[:got]
	return &peekReader{head: head, rest: io.MultiReader(bytes.NewReader(head), r)}
}

func (p *peekReader) Read(b []byte) (int, error) { return p.rest.Read(b) }

// isTarArchive says whether f, from its start, is a tar archive ADD unpacks.
func isTarArchive(f io.ReadSeeker) (bool, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	r, err := decompressArchive(f)
	if errors.Is(err, ErrUnsupportedArchive) {
		return false, err
	}
	if err != nil {
		return false, nil // not the stream its magic said: a file like any other
	}
	defer r.Close()
	_, err = tar.NewReader(r).Next()
	return err == nil || errors.Is(err, tar.ErrInsecurePath), nil
}

// unpackSource unpacks ADD source s into Dest when it is a tar archive; it
// reports false, having written nothing, for any other file.
func (c *copier) unpackSource(ctx context.Context, s *copySource) (bool, error) {
	f, err := s.node(c.src).open()
	if err != nil {
		return false, err
	}
	defer f.Close()
	if ok, err := isTarArchive(f); !ok || err != nil {
		return false, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return true, err
	}
	r, err := decompressArchive(f)
	if err != nil {
		return true, err
	}
	defer r.Close()
	// Dest is made as for any copy but for --chmod, which leaves an
	// archive's entries and Dest alone (BuildKit's and buildah's rule).
	dir, err := c.mkdirWith(c.dest, newDirAttrs{uid: c.UID, gid: c.GID, mode: 0o755})
	if err != nil {
		return true, err
	}
	defer unix.Close(dir)
	var owner *newDirAttrs
	if c.Chown || c.UID != 0 || c.GID != 0 {
		owner = &newDirAttrs{uid: c.UID, gid: c.GID}
	}
	n, err := unpackTar(ctx, r, &fsRoot{fd: dir, path: "/" + c.dest}, owner)
	c.count += n
	return true, err
}

// unpackTar unpacks tar stream r into dest, as the comment at the top of
// this file says, and returns how many entries it wrote; owner, when not
// nil, owns every entry. It stops with ctx's error between two entries.
func unpackTar(ctx context.Context, r io.Reader, dest *fsRoot, owner *newDirAttrs) (int, error) {
	u := &unpacker{root: dest, owner: owner}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return u.count, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			return u.count, fmt.Errorf("read archive: %w", err)
		}
		if err := u.entry(tr, hdr); err != nil {
			return u.count, fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
	return u.count, u.setDirTimes()
}

type unpacker struct {
	root  *fsRoot
	owner *newDirAttrs
	dirs  []dirTime // directories unpacked, whose times are set last
	count int
}

type dirTime struct {
	rel   string
	mtime unix.Timespec
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	name, err := entryName(hdr.Name)
	if err != nil || name == "" {
		return err
	}
	parentRel, base := path.Split(name)
	// Parents the archive has no entry for are root's, --chown or not, as
	// BuildKit makes them.
	parent, made, err := u.root.mkdirAllNoDangling(parentRel, newDirAttrs{mode: 0o755})
	u.count += made
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	m := u.meta(hdr)
	if hdr.Typeflag != tar.TypeDir {
		if err := removeDirAt(parent, base); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = u.dir(parent, base, m)
		u.dirs = append(u.dirs, dirTime{rel: name, mtime: m.mtime})
	case tar.TypeReg, tar.TypeGNUSparse:
		err = writeRegular(parent, base, tr, m)
	case tar.TypeSymlink:
		err = writeSymlink(parent, base, hdr.Linkname, m)
	case tar.TypeLink:
		if err = u.hardlink(parent, base, name, hdr.Linkname); err == nil {
			// The link entry's owner, mode and time go to the file, as
			// containerd's, BuildKit's and buildah's unpacking give them.
			err = m.applyAt(parent, base)
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		typ := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		err = writeNode(parent, base, typ, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))), m)
	default:
		return nil // global headers and the like hold no file
	}
	if err == nil {
		u.count++
	}
	return err
}

// removeDirAt removes directory name in dir, and all in it, if there is
// one there (anything else is left to the entry's own writer).
// os.RemoveAll goes down with openat and O_NOFOLLOW from the directory it
// opens: the only path resolved is dir's own descriptor in /proc, so no
// symlink in the tree takes it anywhere else.
func removeDirAt(dir int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	if err := os.RemoveAll(fmt.Sprintf("/proc/self/fd/%d/%s", dir, name)); err != nil {
		return fmt.Errorf("replacing directory %s: %w", name, err)
	}
	return nil
}

// entryName is the path below Dest that archive name rawName unpacks to,
// "" for Dest itself: resolved as if Dest were the root, so that ".." at
// the top stays there ("../x" and "/x" are Dest/x), as BuildKit's and
// docker's unpacks (chrootarchive, Dest the root of a chroot) and buildah's
// leave them. (archive/tar refuses names with a NUL byte.)
func entryName(rawName string) (string, error) {
	return strings.TrimPrefix(path.Clean("/"+rawName), "/"), nil
}

func (u *unpacker) meta(hdr *tar.Header) entryMeta {
	m := entryMeta{uid: hdr.Uid, gid: hdr.Gid, mode: uint32(hdr.Mode) & 0o7777, mtime: tarTimespec(hdr.ModTime)}
	if u.owner != nil {
		m.uid, m.gid = u.owner.uid, u.owner.gid
	}
	for key, value := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(key, "SCHILY.xattr."); ok && keepXattr(name) {
			m.xattrs = append(m.xattrs, xattr{name: name, value: []byte(value)})
		}
	}
	slices.SortFunc(m.xattrs, func(a, b xattr) int { return strings.Compare(a.name, b.name) })
	return m
}

// dir makes directory name in parent, or merges into the one there, and
// gives it m but its time, set last.
func (u *unpacker) dir(parent int, name string, m entryMeta) error {
	var st unix.Stat_t
	err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err = unix.Unlinkat(parent, name, 0); err == nil {
			err = unix.ENOENT
		}
	}
	if errors.Is(err, unix.ENOENT) {
		err = unix.Mkdirat(parent, name, 0o700)
	}
	if err != nil {
		return &os.PathError{Op: "mkdir", Path: name, Err: err}
	}
	fd, err := openDirAt(parent, name, unix.O_RDONLY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return m.applyFd(fd)
}

// hardlink links name in parent (whose path below Dest is rel) to the
// entry linkname names, inside Dest.
func (u *unpacker) hardlink(parent int, name, rel, linkname string) error {
	target, err := entryName(linkname)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", linkname, err)
	}
	if target == "" {
		return &os.PathError{Op: "link", Path: linkname, Err: unix.EPERM}
	}
	if target == rel {
		return nil // to itself: it is there already
	}
	targetDir, targetName := path.Split(target)
	tfd, err := u.root.open(targetDir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	if err := removeNonDir(parent, name); err != nil {
		return err
	}
	if err := unix.Linkat(tfd, targetName, parent, name, 0); err != nil {
		return &os.PathError{Op: "link", Path: linkname, Err: err}
	}
	return nil
}

// setDirTimes gives the directories unpacked their times, deepest last
// written first, once nothing more is written in them.
func (u *unpacker) setDirTimes() error {
	for _, d := range slices.Backward(u.dirs) {
		parentRel, name := path.Split(d.rel)
		parent, err := u.root.open(parentRel, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			continue // replaced by a later entry
		}
		err = setTimes(parent, name, d.mtime)
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}

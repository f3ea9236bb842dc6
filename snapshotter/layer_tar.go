package snapshotter

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/containerd/stargz-snapshotter/estargz"
	"golang.org/x/sys/unix"
)

// The OCI image-spec names of whiteouts.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	paxXattr       = "SCHILY.xattr."
)

// layerTar writes the changes of an upper directory as an OCI layer tar.
//
// It is our own rather than containerd's pkg/archive ChangeWriter, which
// produces the same shape of tar but keeps only the security.capability
// extended attribute (a layer made from a step that sets user.* or
// trusted.* attributes would lose them), drops sockets without a word, and
// takes its changes from continuity's differ rather than from
// UpperChanges.
//
// Everything it writes is a function of the upper directory's content and
// metadata, never of where or how that directory is stored: no inode
// numbers (they only pair hardlinks within one run), no directory sizes, no
// access or change times, no host user names, no readdir order (changes
// arrive sorted).
type layerTar struct {
	tw    *tar.Writer
	upper string
	clamp *time.Time // mtimes after it are written as it
	warn  func(msg string, args ...any)
	// utf8 refuses names, link targets and xattr names that are not
	// UTF-8: a table of contents (JSON) would hold them mangled, and a
	// lazy mount would show another name than the tar holds.
	utf8    bool
	dirs    map[string]bool   // directories written, by tar name without the slash
	links   map[fileID]string // tar name of the first entry of each multiply linked inode
	entries int
}

type fileID struct{ dev, ino uint64 }

// whiteoutTime is the time of whiteouts and opaque markers, which have no
// file of their own to take one from. It is 1970-01-01 whether or not
// SOURCE_DATE_EPOCH is set, as containerd v2 writes them: clamping it to the
// epoch would leave it unchanged anyway.
var whiteoutTime = time.Unix(0, 0)

func newLayerTar(w io.Writer, upper string, clamp *time.Time, warn func(string, ...any)) *layerTar {
	return &layerTar{
		tw:    tar.NewWriter(w),
		upper: upper,
		clamp: clamp,
		warn:  warn,
		dirs:  map[string]bool{},
		links: map[fileID]string{},
	}
}

// add writes the entries of one change: a whiteout for a deletion, else the
// entry itself (and, for an opaque directory, its opaque marker), each
// preceded by whatever parent directories the tar does not have yet.
func (lt *layerTar) add(ctx context.Context, c Change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name := strings.TrimPrefix(c.Path, "/")
	if reserved(name) {
		// Every reader of the layer would take it for a deletion (of
		// "x" for ".wh.x": the image spec reserves the prefix), and
		// delete a lower file it never touched: left out, with a warning.
		if c.Kind != ChangeDelete {
			lt.warn("left out: a name starting with "+whiteoutPrefix+" is a deletion in a layer", "path", "/"+name)
		}
		return nil
	}
	if c.Kind == ChangeDelete {
		dir, base := path.Split(name)
		return lt.writeMarker(dir + whiteoutPrefix + base)
	}
	hdr, err := lt.header(name, c.Info)
	if err != nil || hdr == nil {
		return err
	}
	if err := lt.writeEntry(ctx, hdr); err != nil {
		return err
	}
	if c.Opaque {
		return lt.writeMarker(name + "/" + whiteoutOpaque)
	}
	return nil
}

// reserved says whether a part of name starts with the whiteout prefix.
func reserved(name string) bool {
	for _, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, whiteoutPrefix) {
			return true
		}
	}
	return false
}

// close finishes the tar (its two zero blocks); it does not close the
// underlying writer.
func (lt *layerTar) close() error {
	return lt.tw.Close()
}

// header describes the upper entry name (a tar name without a trailing
// slash). It returns nil for sockets, which a layer cannot hold: they are
// skipped with a warning, as they are only ever made by a running process.
func (lt *layerTar) header(name string, info iofs.FileInfo) (*tar.Header, error) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no stat information", name)
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777), // permissions with setuid, setgid and sticky
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: lt.mtime(time.Unix(st.Mtim.Sec, 0)), // whole seconds, as containerd
		Format:  tar.FormatPAX,
	}
	full := filepath.Join(lt.upper, name)
	switch mode := info.Mode(); mode.Type() {
	case 0:
		hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
	case iofs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case iofs.ModeSymlink:
		target, err := os.Readlink(full)
		if err != nil {
			return nil, err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case iofs.ModeNamedPipe:
		hdr.Typeflag = tar.TypeFifo
	case iofs.ModeDevice | iofs.ModeCharDevice, iofs.ModeDevice:
		hdr.Typeflag = tar.TypeBlock
		if mode&iofs.ModeCharDevice != 0 {
			hdr.Typeflag = tar.TypeChar
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case iofs.ModeSocket:
		lt.warn("socket skipped: a layer cannot hold one", "path", "/"+name)
		return nil, nil
	default:
		return nil, fmt.Errorf("/%s: a layer cannot hold a file of type %v", name, mode.Type())
	}
	if hdr.Typeflag != tar.TypeDir && st.Nlink > 1 {
		id := fileID{dev: st.Dev, ino: st.Ino}
		if first, ok := lt.links[id]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			lt.links[id] = name
		}
	}
	xattrs, err := Xattrs(full)
	if err != nil {
		return nil, err
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for k, v := range xattrs { // archive/tar writes the records sorted
			hdr.PAXRecords[paxXattr+k] = string(v)
		}
	}
	return hdr, nil
}

// mtime clamps t to SOURCE_DATE_EPOCH, when there is one.
func (lt *layerTar) mtime(t time.Time) time.Time {
	if lt.clamp != nil && t.After(*lt.clamp) {
		return *lt.clamp
	}
	return t
}

// writeEntry writes hdr, its parents first, and for a regular file its
// content from the upper directory (holes of sparse files read as zeros:
// archive/tar writes no sparse entries, and holes would make the digest
// depend on the filesystem).
func (lt *layerTar) writeEntry(ctx context.Context, hdr *tar.Header) error {
	if err := lt.writeHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	f, err := os.Open(filepath.Join(lt.upper, hdr.Name))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := copyContent(ctx, lt.tw, f, hdr.Size); err != nil {
		return fmt.Errorf("/%s: %w", hdr.Name, err)
	}
	return nil
}

// copyContent copies size bytes of src, in pieces so that a large file
// stops at once when ctx is done.
func copyContent(ctx context.Context, dst io.Writer, src io.Reader, size int64) error {
	const piece = 1 << 20
	for done := int64(0); done < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.CopyN(dst, src, min(piece, size-done))
		done += n
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("shrank from %d to %d bytes while the layer was written", size, done)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeMarker writes an empty regular file that stands for a whiteout or
// an opaque directory.
func (lt *layerTar) writeMarker(name string) error {
	return lt.writeHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		ModTime:  lt.mtime(whiteoutTime), // unchanged unless SOURCE_DATE_EPOCH is before 1970
		Format:   tar.FormatPAX,
	})
}

func (lt *layerTar) writeHeader(hdr *tar.Header) error {
	if err := lt.writeParents(hdr.Name); err != nil {
		return err
	}
	if lt.utf8 {
		if err := tocCanHold(hdr); err != nil {
			return err
		}
	}
	if err := lt.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar header for /%s: %w", hdr.Name, err)
	}
	lt.entries++
	if hdr.Typeflag == tar.TypeDir {
		lt.dirs[strings.TrimSuffix(hdr.Name, "/")] = true
	}
	return nil
}

// writeParents writes, outermost first, the parent directories of name
// that the tar does not have yet, with their metadata in the upper
// directory, so that the layer is self-contained and parents come before
// their children. They are missing only when UpperChanges left them out as
// unchanged copies of lower directories, so their upper metadata is the
// lower one.
func (lt *layerTar) writeParents(name string) error {
	parent := path.Dir(strings.TrimSuffix(name, "/"))
	if parent == "." || lt.dirs[parent] {
		return nil
	}
	info, err := os.Lstat(filepath.Join(lt.upper, parent))
	if err != nil {
		return err
	}
	if !info.IsDir() {
		return fmt.Errorf("/%s: parent of /%s is not a directory", parent, name)
	}
	hdr, err := lt.header(parent, info)
	if err != nil {
		return err
	}
	return lt.writeHeader(hdr) // recurses to the grandparents first
}

// ErrNotInTOC is wrapped when an entry cannot go into a layer with a
// table of contents (eStargz, zstd:chunked): a name that is not UTF-8, or
// one of the names the format keeps for itself.
var ErrNotInTOC = errors.New("a layer with a table of contents cannot hold it")

// ErrNotUTF8 is wrapped, with ErrNotInTOC, when a name is not UTF-8.
var ErrNotUTF8 = errors.New("not valid UTF-8")

// tocNames are the names at a layer's root that the eStargz writer (and
// zstd:chunked, which uses it) keeps for its own entries: its table of
// contents and its prefetch landmarks. It drops an entry of the tar it is
// given under one of these names without a word (estargz.Build), so a
// user's file of that name would be lost from the layer.
var tocNames = []string{estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark}

// tocCanHold checks that the names of hdr survive a JSON table of
// contents (eStargz, zstd:chunked), which replaces bytes that are not
// UTF-8.
func tocCanHold(hdr *tar.Header) error {
	what, bad := "name", !utf8.ValidString(hdr.Name)
	if !bad && hdr.Linkname != "" && !utf8.ValidString(hdr.Linkname) {
		what, bad = "link target", true
	}
	for k := range hdr.PAXRecords {
		if !bad && !utf8.ValidString(k) {
			what, bad = "extended attribute name", true
		}
	}
	name := "/" + strings.TrimSuffix(hdr.Name, "/")
	if bad {
		return fmt.Errorf("%q: its %s is %w, which the table of contents of a lazily mountable layer cannot hold "+
			"(a lazy mount would show another name): %w", name, what, ErrNotUTF8, ErrNotInTOC)
	}
	if slices.Contains(tocNames, strings.TrimSuffix(hdr.Name, "/")) {
		return fmt.Errorf("%q: the eStargz and zstd:chunked formats keep this name at a layer's root for their own entries: %w",
			name, ErrNotInTOC)
	}
	return nil
}

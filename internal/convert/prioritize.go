package convert

import (
	"archive/tar"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// layerNames is what a layer's tar says about paths of the image: the
// names it holds (with their tar types), the paths its whiteouts delete,
// and the directories it makes opaque; and why it cannot become an eStargz
// layer that reads back the same, "" when it can:
//   - a name (or link target, or xattr name) that is not UTF-8: eStargz's
//     table of contents is JSON, which holds it mangled, so a lazy mount
//     would show another name (or merge two);
//   - a hardlink to a name the layer writes more than once: the eStargz
//     writer keeps one entry of a name, the last, and moves it after the
//     link, so the link would name other content than the tar's (or
//     come before its target, which no reader takes);
//   - a root entry named as eStargz's table of contents or one of its
//     prefetch landmarks that is not the input's own (an eStargz input's
//     landmarks are 1-byte files, one of them its tar's first entry, its
//     table of contents the last): the eStargz writer drops such entries
//     without a word.
type layerNames struct {
	types      map[string]byte
	deleted    map[string]bool // ".wh.x" deletes x
	opaque     map[string]bool // ".wh..wh..opq" in d hides what the layers below hold in d
	notEStargz string
}

// scanNames reads the tar's headers (its contents are skipped).
func scanNames(r io.Reader) (*layerNames, error) {
	ln := &layerNames{types: map[string]byte{}, deleted: map[string]bool{}, opaque: map[string]bool{}}
	written := map[string]int{}
	var links [][2]string // hardlink, its target
	tr := tar.NewReader(r)
	tocNotLast := "" // set while the last entry is one named as a table of contents
	landmarkFirst := false
	for first := true; ; first = false {
		h, err := tr.Next()
		if err == io.EOF {
			if !landmarkFirst {
				// No eStargz layer: its writer puts a landmark first.
				ln.notEStargz = cmp.Or(ln.notEStargz, tocNotLast)
			}
			break
		}
		if err != nil {
			return nil, err
		}
		if ln.notEStargz == "" {
			ln.notEStargz = tocNotLast
		}
		if ln.notEStargz == "" {
			ln.notEStargz = notUTF8(h)
		}
		name := tarName(h.Name)
		tocNotLast = ""
		kept := func() string {
			return fmt.Sprintf("the entry %q has a name eStargz keeps for its own entries at a layer's root", h.Name)
		}
		switch {
		case name == estargz.TOCTarName && h.Typeflag == tar.TypeReg:
			tocNotLast = kept() // unless it is the last entry: an eStargz input's own
		case name == estargz.TOCTarName:
			ln.notEStargz = cmp.Or(ln.notEStargz, kept())
		case (name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark) && (h.Typeflag != tar.TypeReg || h.Size != 1):
			ln.notEStargz = cmp.Or(ln.notEStargz, kept())
		case name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark:
			landmarkFirst = landmarkFirst || first
		}
		written[name]++
		if h.Typeflag == tar.TypeLink {
			links = append(links, [2]string{h.Name, tarName(h.Linkname)})
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == ".wh..wh..opq":
			ln.opaque[dir] = true
		case strings.HasPrefix(base, ".wh."):
			ln.deleted[path.Join(dir, strings.TrimPrefix(base, ".wh."))] = true
		default:
			ln.types[name] = h.Typeflag
		}
	}
	for _, l := range links {
		if ln.notEStargz == "" && written[l[1]] > 1 {
			ln.notEStargz = fmt.Sprintf("the hardlink %q names %q, which the layer writes more than once: eStargz keeps one entry of a name, after the link", l[0], l[1])
		}
	}
	return ln, nil
}

// notUTF8 says which of h's names is not UTF-8, "" when all are.
func notUTF8(h *tar.Header) string {
	if !utf8.ValidString(h.Name) {
		return fmt.Sprintf("the name %q is not UTF-8, which an eStargz table of contents cannot hold", h.Name)
	}
	if !utf8.ValidString(h.Linkname) {
		return fmt.Sprintf("the link target %q is not UTF-8, which an eStargz table of contents cannot hold", h.Linkname)
	}
	for k := range h.PAXRecords {
		if !utf8.ValidString(k) {
			return fmt.Sprintf("an attribute name of %q is not UTF-8, which an eStargz table of contents cannot hold", h.Name)
		}
	}
	return ""
}

// decides says whether the layer decides p for the layers below it: it
// holds p (held), or its whiteouts delete p or a directory above it, or it
// makes a directory above p opaque, or it holds a non-directory where a
// directory above p would be (hidden).
func (ln *layerNames) decides(p string) (held, hidden bool) {
	if _, ok := ln.types[p]; ok {
		return true, false
	}
	if ln.deleted[p] {
		return false, true
	}
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		if ln.deleted[d] || ln.opaque[d] {
			return false, true
		}
		if t, ok := ln.types[d]; ok && t != tar.TypeDir {
			return false, true
		}
	}
	return false, false
}

// priorities hands each layer, from the top down, the prioritized paths
// whose entry the image shows from that layer, and keeps what to warn of.
type priorities struct {
	list    []string        // as given, in order
	decided map[string]bool // by a layer above the one converted next
	hidden  []string        // deleted or hidden by a layer above any that holds them
	late    []string        // held by a layer that could not store them first
}

func newPriorities(list []string) *priorities {
	return &priorities{list: list, decided: map[string]bool{}}
}

// take returns the paths the layer described by ln shows (in the list's
// order), and marks every path it decides as decided.
func (pr *priorities) take(ln *layerNames) []string {
	var out []string
	for _, p := range pr.list {
		name := tarName(p)
		if pr.decided[name] {
			continue
		}
		held, hidden := ln.decides(name)
		switch {
		case held:
			out = append(out, p)
		case hidden:
			pr.hidden = append(pr.hidden, p)
		default:
			continue
		}
		pr.decided[name] = true
	}
	return out
}

// notFirst notes the paths a layer holds and did not store first: eStargz
// moves a file to the front only with its parent directories, and a tar
// made of a tree's children under a prefix has no entries for them.
func (pr *priorities) notFirst(paths []string) {
	pr.late = append(pr.late, paths...)
}

// warn says which prioritized paths no layer stored first: in no layer, in
// a layer without entries for their parent directories, or deleted or
// hidden by an upper layer (whose lower copies nothing reads).
func (pr *priorities) warn(ctx context.Context) {
	var none []string
	for _, p := range pr.list {
		if !pr.decided[tarName(p)] {
			none = append(none, p)
		}
	}
	none = append(none, pr.late...)
	if len(none) > 0 {
		slog.WarnContext(ctx, "convert: prioritized paths not stored first: in no layer, or in a layer without entries for their parent directories",
			"paths", len(none), "of", len(pr.list), "first", none[:min(len(none), 5)])
	}
	if len(pr.hidden) > 0 {
		slog.WarnContext(ctx, "convert: prioritized paths the image deletes or hides (an upper layer's whiteout, opaque directory or file): their lower copies, which nothing reads, are not stored first",
			"paths", len(pr.hidden), "of", len(pr.list), "first", pr.hidden[:min(len(pr.hidden), 5)])
	}
}

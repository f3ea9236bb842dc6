package convert

import (
	"archive/tar"
	"context"
	"io"
	"log/slog"
	"path"
	"strings"
)

// layerNames is what a layer's tar says about paths of the image: the
// names it holds (with their tar types), the paths its whiteouts delete,
// and the directories it makes opaque.
type layerNames struct {
	types   map[string]byte
	deleted map[string]bool // ".wh.x" deletes x
	opaque  map[string]bool // ".wh..wh..opq" in d hides what the layers below hold in d
}

// scanNames reads the tar's headers (its contents are skipped).
func scanNames(r io.Reader) (*layerNames, error) {
	ln := &layerNames{types: map[string]byte{}, deleted: map[string]bool{}, opaque: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ln, nil
		}
		if err != nil {
			return nil, err
		}
		name := tarName(h.Name)
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

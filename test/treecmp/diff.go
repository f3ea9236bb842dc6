package treecmp

import (
	"fmt"
	"sort"
	"strings"
)

// Field names a part of a Record that Diff compares.
type Field uint

// Fields Diff can be told to ignore. FieldDirMTime is separate from
// FieldMTime because directory mtimes are the field unpackers most often
// get wrong (see ReferenceUnpack).
const (
	FieldType Field = 1 << iota
	FieldMode
	FieldOwner
	FieldSize
	FieldMTime // of everything but directories
	FieldDirMTime
	FieldLink
	FieldRdev
	FieldXattrs
	FieldContent
	FieldHardlinks
)

// DiffOption adjusts Diff.
type DiffOption func(*diffOptions)

type diffOptions struct {
	ignore Field
	skip   func(path string) bool
}

// Ignore leaves fields out of the comparison.
func Ignore(fields ...Field) DiffOption {
	return func(o *diffOptions) {
		for _, f := range fields {
			o.ignore |= f
		}
	}
}

// SkipPaths leaves out entries for which skip returns true (on either side).
func SkipPaths(skip func(path string) bool) DiffOption {
	return func(o *diffOptions) { o.skip = skip }
}

// Diff lists the differences between two walks, one line per difference,
// sorted; it is empty when the trees are equal.
func Diff(want, got []Record, opts ...DiffOption) []string {
	o := &diffOptions{skip: func(string) bool { return false }}
	for _, opt := range opts {
		opt(o)
	}
	index := func(recs []Record) map[string]Record {
		m := make(map[string]Record, len(recs))
		for _, r := range recs {
			if !o.skip(r.Path) {
				m[r.Path] = r
			}
		}
		return m
	}
	w, g := index(want), index(got)
	var out []string
	for p, wr := range w {
		gr, ok := g[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", p, wr.Type))
			continue
		}
		out = append(out, o.compare(wr, gr)...)
	}
	for p, gr := range g {
		if _, ok := w[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %s", p, gr.Type))
		}
	}
	sort.Strings(out)
	return out
}

// compare reports field differences of one path, as "path: field want X, got Y".
func (o *diffOptions) compare(w, g Record) []string {
	var out []string
	check := func(f Field, name string, want, got any) {
		if o.ignore&f == 0 && fmt.Sprint(want) != fmt.Sprint(got) {
			out = append(out, fmt.Sprintf("%s: %s want %v, got %v", w.Path, name, want, got))
		}
	}
	check(FieldType, "type", w.Type, g.Type)
	if w.Type != g.Type {
		return out // the other fields would only repeat the type difference
	}
	check(FieldMode, "mode", fmt.Sprintf("%04o", w.Mode), fmt.Sprintf("%04o", g.Mode))
	check(FieldOwner, "owner", fmt.Sprintf("%d:%d", w.UID, w.GID), fmt.Sprintf("%d:%d", g.UID, g.GID))
	check(FieldSize, "size", w.Size, g.Size)
	mtime := FieldMTime
	if w.Type == "dir" {
		mtime = FieldDirMTime
	}
	check(mtime, "mtime", w.MTime, g.MTime)
	check(FieldLink, "link", fmt.Sprintf("%q", w.Link), fmt.Sprintf("%q", g.Link))
	check(FieldRdev, "rdev", fmt.Sprintf("%d,%d", w.RdevMajor, w.RdevMinor), fmt.Sprintf("%d,%d", g.RdevMajor, g.RdevMinor))
	check(FieldXattrs, "xattrs", formatXattrs(w.Xattrs), formatXattrs(g.Xattrs))
	check(FieldContent, "sha256", w.SHA256, g.SHA256)
	check(FieldHardlinks, "hardlinks", w.Hardlinks, g.Hardlinks)
	return out
}

func formatXattrs(xs []Xattr) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%s=%q", x.Name, x.Value)
	}
	return "{" + strings.Join(parts, " ") + "}"
}

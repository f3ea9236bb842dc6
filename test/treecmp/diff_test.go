package treecmp

import (
	"slices"
	"strings"
	"testing"
)

func base() Record {
	return Record{Path: "f", Type: "reg", Mode: 0o644, Size: 1, MTime: 5, SHA256: "aa",
		Xattrs: []Xattr{{"user.x", "1"}}, Hardlinks: []string{"f", "g"}}
}

func TestDiffEachField(t *testing.T) {
	cases := []struct {
		field  Field
		change func(*Record)
		want   string
	}{
		{FieldMode, func(r *Record) { r.Mode = 0o4644 }, "f: mode want 0644, got 4644"},
		{FieldOwner, func(r *Record) { r.UID = 70000 }, "f: owner want 0:0, got 70000:0"},
		{FieldSize, func(r *Record) { r.Size = 2 }, "f: size want 1, got 2"},
		{FieldMTime, func(r *Record) { r.MTime = 6 }, "f: mtime want 5, got 6"},
		{FieldLink, func(r *Record) { r.Link = "x" }, `f: link want "", got "x"`},
		{FieldRdev, func(r *Record) { r.RdevMajor = 1 }, "f: rdev want 0,0, got 1,0"},
		{FieldXattrs, func(r *Record) { r.Xattrs = nil }, `f: xattrs want {user.x="1"}, got {}`},
		{FieldContent, func(r *Record) { r.SHA256 = "bb" }, "f: sha256 want aa, got bb"},
		{FieldHardlinks, func(r *Record) { r.Hardlinks = nil }, "f: hardlinks want [f g], got []"},
		{FieldType, func(r *Record) { r.Type = "dir"; r.Mode = 0 }, "f: type want reg, got dir"},
	}
	for _, c := range cases {
		got := base()
		c.change(&got)
		d := Diff([]Record{base()}, []Record{got})
		if !slices.Equal(d, []string{c.want}) {
			t.Errorf("got %q, want [%q]", d, c.want)
		}
		if d := Diff([]Record{base()}, []Record{got}, Ignore(c.field)); len(d) != 0 && c.field != FieldType {
			t.Errorf("Ignore(%d) still reports %q", c.field, d)
		}
	}
}

func TestDiffPresenceAndOptions(t *testing.T) {
	if d := Diff([]Record{base()}, []Record{base()}); len(d) != 0 {
		t.Fatalf("equal trees differ: %q", d)
	}
	extra := Record{Path: "zz", Type: "fifo"}
	d := Diff([]Record{base()}, []Record{extra})
	if !slices.Equal(d, []string{"f: missing (want reg)", "zz: unexpected fifo"}) {
		t.Fatalf("got %q", d)
	}
	skip := SkipPaths(func(p string) bool { return strings.HasPrefix(p, "z") })
	if d := Diff([]Record{base()}, []Record{base(), extra}, skip); len(d) != 0 {
		t.Fatalf("SkipPaths: %q", d)
	}
	dir := Record{Path: "d", Type: "dir", MTime: 1}
	moved := dir
	moved.MTime = 2
	if d := Diff([]Record{dir}, []Record{moved}, Ignore(FieldMTime)); len(d) != 1 {
		t.Fatalf("FieldMTime must not hide directory mtimes: %q", d)
	}
	if d := Diff([]Record{dir}, []Record{moved}, Ignore(FieldDirMTime)); len(d) != 0 {
		t.Fatalf("FieldDirMTime: %q", d)
	}
}

package treecmp

import (
	"slices"
	"testing"

	"github.com/stratafs/strata/test/fixture"
)

func paths(recs []Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Path
	}
	return out
}

func TestExpectedSemantics(t *testing.T) {
	lower := fixture.LayerSpec{fixture.Dir("."), fixture.Dir("a"), fixture.Text("a/x", "x"), fixture.Dir("a/sub"),
		fixture.Text("a/sub/y", "y"), fixture.Dir("o"), fixture.Text("o/old", "o"), fixture.Text("f", "file"),
		fixture.Dir("d"), fixture.Text("d/c", "c"), fixture.Text("t", "target")}
	upper := fixture.LayerSpec{
		fixture.Whiteout("a/sub"),
		fixture.Text("o/new", "n"), fixture.Opaque("o"), // opaque spares same-layer entries in any order
		fixture.Dir("f"), fixture.Text("f/in", "dir now"),
		fixture.Text("d", "file now"),
		fixture.Hardlink("t2", "t"),
	}
	recs, err := Expected([]fixture.LayerSpec{lower, upper})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".", "a", "a/x", "d", "f", "f/in", "o", "o/new", "t", "t2"}
	if got := paths(recs); !slices.Equal(got, want) {
		t.Fatalf("paths %v, want %v", got, want)
	}
	got := index(recs)
	if got["d"].Type != "reg" || got["f"].Type != "dir" {
		t.Errorf("type changes: d=%s f=%s", got["d"].Type, got["f"].Type)
	}
	if g := got["t2"].Hardlinks; !slices.Equal(g, []string{"t", "t2"}) || got["t2"].SHA256 != got["t"].SHA256 {
		t.Errorf("hardlink: %+v", got["t2"])
	}
}

func TestExpectedRejectsMissingParent(t *testing.T) {
	if _, err := Expected([]fixture.LayerSpec{{fixture.Text("no/parent", "x")}}); err == nil {
		t.Fatal("missing parent accepted")
	}
	if _, err := Expected([]fixture.LayerSpec{{fixture.Dir("."), fixture.Hardlink("l", "nothing")}}); err == nil {
		t.Fatal("dangling hardlink accepted")
	}
}

package daemon

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs"
)

func TestCheckPrefetchList(t *testing.T) {
	image, other := digest.FromString("image"), digest.FromString("other image")
	l1, l2, l3 := digest.FromString("l1"), digest.FromString("l2"), digest.FromString("l3")
	layers := func(ds ...digest.Digest) []Layer {
		var out []Layer
		for _, d := range ds {
			out = append(out, Layer{Digest: d})
		}
		return out
	}
	list := func(img digest.Digest, ls ...digest.Digest) []byte {
		b, err := (&fs.PrefetchList{MediaType: fs.PrefetchListMediaType, Image: img, Layers: ls,
			Files: []fs.ListedFile{{Layer: len(ls) - 1, Path: "usr/bin/go"}}}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name   string
		list   []byte
		layers []Layer
		prefix bool
		ok     bool
	}{
		{"same image and layers", list(image, l1, l2), layers(l1, l2), false, true},
		{"another image", list(other, l1, l2), layers(l1, l2), false, false},
		{"other layers", list(image, l1, l3), layers(l1, l2), false, false},
		{"fewer layers, no prefix asked", list(image, l1), layers(l1, l2), false, false},
		{"base's layers first", list(image, l1, l2), layers(l1, l2, l3), true, true},
		{"base's layers not first", list(image, l2, l3), layers(l1, l2, l3), true, false},
		{"list longer than the image", list(image, l1, l2, l3), layers(l1, l2), true, false},
		{"hostile path", []byte(`{"mediaType":"` + fs.PrefetchListMediaType + `","image":"` + image.String() +
			`","layers":["` + l1.String() + `"],"files":[{"layer":0,"path":"../../etc/shadow"}]}`), layers(l1), false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := checkPrefetchList(c.list, image, c.layers, c.prefix)
			if c.ok && (err != nil || got == nil) {
				t.Fatalf("refused: %v", err)
			}
			if !c.ok && !errors.Is(err, fs.ErrBadPrefetchList) {
				t.Fatalf("got %v, want ErrBadPrefetchList", err)
			}
		})
	}
}

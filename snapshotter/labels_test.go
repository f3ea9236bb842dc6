package snapshotter_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/snapshotter"
)

var (
	dA = digest.FromString("a")
	dB = digest.FromString("b")
	dM = digest.FromString("manifest")
)

func TestParseRemoteLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   snapshotter.RemoteTarget
		err    string
	}{
		{"cri", map[string]string{
			snapshotter.LabelImageRef: "r.test/app:1", snapshotter.LabelLayerDigest: dA.String(),
			snapshotter.LabelManifestDigest: dM.String(), snapshotter.LabelImageLayers: dA.String() + "," + dB.String(),
		}, snapshotter.RemoteTarget{Ref: "r.test/app:1", Layer: dA, Manifest: dM, Layers: []digest.Digest{dA, dB}, Client: "cri"}, ""},
		{"stargz (BuildKit, nerdctl)", map[string]string{
			snapshotter.LabelStargzRef: "r.test/app:1", snapshotter.LabelStargzDigest: dB.String(),
			snapshotter.LabelStargzLayers: dB.String(), "containerd.io/snapshot.ref": "sha256:chain",
		}, snapshotter.RemoteTarget{Ref: "r.test/app:1", Layer: dB, Layers: []digest.Digest{dB}, Client: "stargz"}, ""},
		{"both: CRI's wins", map[string]string{
			snapshotter.LabelImageRef: "r.test/app@" + dM.String(), snapshotter.LabelLayerDigest: dA.String(),
			snapshotter.LabelStargzRef: "r.test/app:1", snapshotter.LabelStargzDigest: dB.String(),
		}, snapshotter.RemoteTarget{Ref: "r.test/app@" + dM.String(), Layer: dA, Client: "cri"}, ""},
		{"BuildKit: stargz set and cri.image-ref alone", map[string]string{
			snapshotter.LabelImageRef: "r.test/app:1", snapshotter.LabelStargzRef: "r.test/app:1",
			snapshotter.LabelStargzDigest: dB.String(), snapshotter.LabelStargzLayers: dB.String(),
			"containerd.io/snapshot/stargz/toc.digest": dA.String(), "io.containers.estargz.uncompressed-size": "123",
		}, snapshotter.RemoteTarget{Ref: "r.test/app:1", Layer: dB, Layers: []digest.Digest{dB}, Client: "stargz"}, ""},
		{"none", map[string]string{"containerd.io/snapshot.ref": "x"}, snapshotter.RemoteTarget{}, "no label names an image and a layer"},
		{"cri without layer", map[string]string{snapshotter.LabelImageRef: "r.test/app:1"}, snapshotter.RemoteTarget{}, "cri.layer-digest is missing"},
		{"stargz without ref", map[string]string{snapshotter.LabelStargzDigest: dA.String()}, snapshotter.RemoteTarget{}, "stargz.reference is missing"},
		{"bad digest", map[string]string{snapshotter.LabelStargzRef: "r/a:1", snapshotter.LabelStargzDigest: "sha256:zz"}, snapshotter.RemoteTarget{}, "stargz.digest"},
		{"bad layers", map[string]string{snapshotter.LabelStargzRef: "r/a:1", snapshotter.LabelStargzDigest: dA.String(), snapshotter.LabelStargzLayers: dA.String() + ",nope"}, snapshotter.RemoteTarget{}, "stargz.layers"},
		{"bad manifest", map[string]string{snapshotter.LabelImageRef: "r/a:1", snapshotter.LabelLayerDigest: dA.String(), snapshotter.LabelManifestDigest: "md5:x"}, snapshotter.RemoteTarget{}, "cri.manifest-digest"},
		{"ref with a newline", map[string]string{snapshotter.LabelImageRef: "r/a:1\nx", snapshotter.LabelLayerDigest: dA.String()}, snapshotter.RemoteTarget{}, "not an image reference"},
		{"too many layers", map[string]string{snapshotter.LabelStargzRef: "r/a:1", snapshotter.LabelStargzDigest: dA.String(), snapshotter.LabelStargzLayers: strings.Repeat("x,", 1500)}, snapshotter.RemoteTarget{}, "stargz.layers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := snapshotter.ParseRemoteLabels(tc.labels)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Ref != tc.want.Ref || got.Layer != tc.want.Layer || got.Manifest != tc.want.Manifest ||
				got.Client != tc.want.Client || strings.Join(digests(got.Layers), ",") != strings.Join(digests(tc.want.Layers), ",") {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := snapshotter.ParseRemoteLabels(nil); !errors.Is(err, snapshotter.ErrNoTarget) {
		t.Errorf("nil labels: %v, want ErrNoTarget", err)
	}
}

func digests(ds []digest.Digest) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

func FuzzParseRemoteLabels(f *testing.F) {
	f.Add("r.test/app:1", dA.String(), dA.String()+","+dB.String(), dM.String(), true)
	f.Add("r.test/app:1", dB.String(), "", "", false)
	f.Add("", "sha256:zz", ",,,", "x", true)
	f.Fuzz(func(t *testing.T, ref, layer, layers, manifest string, cri bool) {
		labels := map[string]string{
			snapshotter.LabelStargzRef: ref, snapshotter.LabelStargzDigest: layer, snapshotter.LabelStargzLayers: layers,
		}
		if cri {
			labels = map[string]string{
				snapshotter.LabelImageRef: ref, snapshotter.LabelLayerDigest: layer,
				snapshotter.LabelImageLayers: layers, snapshotter.LabelManifestDigest: manifest,
			}
		}
		got, err := snapshotter.ParseRemoteLabels(labels)
		if err != nil {
			return
		}
		// What parses is usable: a reference without blanks, valid digests.
		if got.Ref == "" || strings.ContainsAny(got.Ref, " \n\x00") || got.Layer.Validate() != nil {
			t.Fatalf("accepted %+v", got)
		}
		for _, d := range got.Layers {
			if d.Validate() != nil {
				t.Fatalf("accepted layer digest %q", d)
			}
		}
		if got.Manifest != "" && got.Manifest.Validate() != nil {
			t.Fatalf("accepted manifest digest %q", got.Manifest)
		}
	})
}

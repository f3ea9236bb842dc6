package snapshotter

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// The label sets lazy-pull clients send on Prepare. CRI (containerd's
// image service) sends cri.*; BuildKit, nerdctl and ctr-remote send
// stargz-snapshotter's remote/stargz.* (stargz-snapshotter's
// source.AppendDefaultLabelsHandlerWrapper). Both name the image and the
// layer; only CRI names the manifest by digest.
// LabelRecord, on the Prepare of a container's active snapshot, asks for
// the files the container opens in its image's lazily mounted layers to
// be recorded, as `strata mount --record` does: for the duration it gives
// ("30s"; empty or "true" for the default), or until the snapshot is
// removed. LabelRecordPush = "true" pushes the list as a referrer of the
// image too. (containerd hands a proxy snapshotter only the labels under
// containerd.io/snapshot/.) For example:
//
//	ctr run --snapshotter strata --snapshotter-label containerd.io/snapshot/strata.record=60s IMAGE ID CMD
const (
	LabelRecord     = "containerd.io/snapshot/strata.record"
	LabelRecordPush = "containerd.io/snapshot/strata.record-push"
)

const (
	LabelStargzRef    = "containerd.io/snapshot/remote/stargz.reference"
	LabelStargzDigest = "containerd.io/snapshot/remote/stargz.digest"
	LabelStargzLayers = "containerd.io/snapshot/remote/stargz.layers"
)

// Remote clients, as RemoteTarget.Client names them.
const (
	ClientCRI    = "cri"
	ClientStargz = "stargz"
)

// Bounds on what a label may hold: containerd's own limit on a label is
// 4 KiB, and an image has at most a few hundred layers.
const (
	maxLabelLen    = 4096
	maxLayerLabels = 1000
)

// RemoteTarget is the layer a Prepare asks to be mounted lazily.
type RemoteTarget struct {
	// Ref is the image reference as the client gave it.
	Ref string
	// Layer is the layer's (compressed) digest.
	Layer digest.Digest
	// Manifest is the image manifest's digest, when the client says it
	// (CRI does; BuildKit and nerdctl do not).
	Manifest digest.Digest
	// Layers are the digests of the layer and those above it in the image
	// (BuildKit, nerdctl) or all of the image's (CRI), when given.
	Layers []digest.Digest
	// Client says which label set named the layer: ClientCRI or
	// ClientStargz.
	Client string
}

// ErrNoTarget is wrapped by ParseRemoteLabels when labels name no remote
// layer at all (a Prepare of a client that knows no lazy pulling).
var ErrNoTarget = errors.New("no label names an image and a layer")

// ParseRemoteLabels reads the layer a Prepare's labels name, from whichever
// set a client sent: CRI's when it names image and layer, else
// stargz-snapshotter's. A set that is there but malformed (a bad digest, an
// over-long or empty reference, too many layers) is an error naming the
// label; when both sets are there and disagree on the layer, CRI's wins
// (containerd sets it from the descriptor it unpacks). CRI's set counts
// only with its layer label: BuildKit sends the stargz set plus
// cri.image-ref alone, and that names the layer by the stargz set.
func ParseRemoteLabels(labels map[string]string) (RemoteTarget, error) {
	criLayer := labels[LabelLayerDigest] != ""
	stargz := labels[LabelStargzRef] != "" || labels[LabelStargzDigest] != ""
	switch {
	case criLayer || (labels[LabelImageRef] != "" && !stargz):
		t, err := parseSet(labels, ClientCRI, LabelImageRef, LabelLayerDigest, LabelImageLayers)
		if err != nil {
			return RemoteTarget{}, err
		}
		if m := labels[LabelManifestDigest]; m != "" {
			if t.Manifest, err = parseDigest(LabelManifestDigest, m); err != nil {
				return RemoteTarget{}, err
			}
		}
		return t, nil
	case stargz:
		return parseSet(labels, ClientStargz, LabelStargzRef, LabelStargzDigest, LabelStargzLayers)
	}
	return RemoteTarget{}, fmt.Errorf("%w (%s and %s, or %s and %s)", ErrNoTarget,
		LabelImageRef, LabelLayerDigest, LabelStargzRef, LabelStargzDigest)
}

func parseSet(labels map[string]string, client, refLabel, digestLabel, layersLabel string) (RemoteTarget, error) {
	t := RemoteTarget{Client: client, Ref: labels[refLabel]}
	if t.Ref == "" {
		return RemoteTarget{}, fmt.Errorf("label %s is missing or empty", refLabel)
	}
	if len(t.Ref) > maxLabelLen || strings.ContainsAny(t.Ref, " \t\r\n\x00") {
		return RemoteTarget{}, fmt.Errorf("label %s: %q is not an image reference", refLabel, clipLabel(t.Ref))
	}
	var err error
	if t.Layer, err = parseDigest(digestLabel, labels[digestLabel]); err != nil {
		return RemoteTarget{}, err
	}
	if v := labels[layersLabel]; v != "" {
		if len(v) > maxLabelLen {
			return RemoteTarget{}, fmt.Errorf("label %s is over %d bytes", layersLabel, maxLabelLen)
		}
		parts := strings.Split(v, ",")
		if len(parts) > maxLayerLabels {
			return RemoteTarget{}, fmt.Errorf("label %s lists %d layers, more than %d", layersLabel, len(parts), maxLayerLabels)
		}
		for _, p := range parts {
			d, err := parseDigest(layersLabel, strings.TrimSpace(p))
			if err != nil {
				return RemoteTarget{}, err
			}
			t.Layers = append(t.Layers, d)
		}
	}
	return t, nil
}

func parseDigest(label, v string) (digest.Digest, error) {
	if v == "" {
		return "", fmt.Errorf("label %s is missing or empty", label)
	}
	if len(v) > maxLabelLen {
		return "", fmt.Errorf("label %s is over %d bytes", label, maxLabelLen)
	}
	d, err := digest.Parse(v)
	if err != nil {
		return "", fmt.Errorf("label %s: %q: %w", label, clipLabel(v), err)
	}
	return d, nil
}

func clipLabel(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

package commit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/store"
)

// Push writes img (made by Build on base) to ref and returns its manifest
// digest. Each base blob is first looked for in ref's repository (HEAD),
// then mounted from the base's repository when both are on one registry;
// only between different registries is it streamed through, from the
// base's registry to ref's, never kept on disk. New blobs are uploaded;
// the config goes up with the layers and the manifest last, so a failure
// at any point publishes no manifest. opts carry auth, transport, retries
// and progress.
func Push(ctx context.Context, img v1.Image, base *Base, ref name.Reference, opts ...remote.Option) (v1.Hash, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	opts = append(opts, remote.WithContext(ctx))
	if err := remote.Write(ref, &mountable{Image: img, base: base}, opts...); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", ref, refused(err))
	}
	return digest, nil
}

// refused says where the credentials of a request a registry refused (401
// or 403: none, wrong ones, or without the right to push) come from.
func refused(err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) || (terr.StatusCode != http.StatusUnauthorized && terr.StatusCode != http.StatusForbidden) {
		return err
	}
	host := ""
	if terr.Request != nil && terr.Request.URL != nil {
		host = terr.Request.URL.Host
	}
	return fmt.Errorf("%w (%s)", err, CredentialsHint(host))
}

// CredentialsHint says where the daemon's credentials for registry host
// ("" for a registry not known) come from, for an error a registry's
// refusal caused.
func CredentialsHint(host string) string {
	if host == "" {
		return "the registry refused the request: the daemon's credentials for it (none, or ones it refuses) come from its user's docker config or DOCKER_CONFIG and their credential helpers: `docker login` as that user"
	}
	return fmt.Sprintf("%s refused the request: the daemon's credentials for it (none, or ones it refuses) come from its user's docker config or DOCKER_CONFIG and their credential helpers: `docker login %s` as that user", host, host)
}

// mountable makes the base's layers mountable from the base's repository:
// go-containerregistry tries a cross-repository mount for a
// remote.MountableLayer after its HEAD finds nothing.
type mountable struct {
	v1.Image
	base *Base
}

func (m *mountable) Layers() ([]v1.Layer, error) {
	ls, err := m.Image.Layers()
	if err != nil {
		return nil, err
	}
	fromBase := map[v1.Hash]bool{}
	for _, d := range m.base.Descriptors() {
		fromBase[d.Digest] = true
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = l
		h, err := l.Digest()
		if err != nil {
			return nil, err
		}
		if fromBase[h] {
			out[i] = &remote.MountableLayer{Layer: l, Reference: m.base.Repo.Digest(h.String())}
		}
	}
	return out, nil
}

const refNameAnnotation = "org.opencontainers.image.ref.name"

// WriteLayout adds img to the OCI image layout at dir (made when missing),
// named tag when tag is not empty. A layout holds every blob, so the base
// layers are read whole (Base.StreamedBytes says how much).
//
// The blobs are written first, then publish is called (a push, say; nil
// for none), and only when it succeeds does index.json name the image: a
// failed publish leaves the layout as it was (and a layout this call made
// is removed). Writers of one layout take turns, holding a lock on its
// directory, so commits into one layout at once keep each other's tags;
// index.json is replaced whole by a rename, so a reader never sees it half
// written. (go-containerregistry's layout package rewrites index.json in
// place and without a lock: it is used here for the blobs only.)
func WriteLayout(img v1.Image, dir, tag string, publish func() error) (err error) {
	var published error // publish's own error, returned as it is
	if publish != nil {
		p := publish
		publish = func() error { published = p(); return published }
	}
	for range 3 {
		var retry bool
		if retry, err = writeLayout(img, dir, tag, publish); !retry {
			break
		}
	}
	if err != nil && err != published {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return err
}

// writeLayout is one try of WriteLayout: retry says the directory was
// removed (by a writer that made it and failed) while this one waited.
func writeLayout(img v1.Image, dir, tag string, publish func() error) (retry bool, err error) {
	_, err = os.Stat(dir)
	made := errors.Is(err, os.ErrNotExist)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, err
	}
	if st.Nlink == 0 {
		return true, nil
	}
	if made {
		defer func() {
			if err != nil {
				os.RemoveAll(dir)
			}
		}()
	}
	p, err := layout.FromPath(dir)
	if errors.Is(err, os.ErrNotExist) {
		p, err = layout.Write(dir, empty.Index)
	}
	if err != nil {
		return false, err
	}
	if err := p.WriteImage(img); err != nil {
		return false, err
	}
	if publish != nil {
		if err := publish(); err != nil {
			return false, err
		}
	}
	return false, nameInLayout(p, img, tag)
}

// nameInLayout adds img's descriptor to the layout's index.json, replacing
// the entry named tag, if any, and writes it to a new file renamed over
// the old.
func nameInLayout(p layout.Path, img v1.Image, tag string) error {
	desc, err := partial.Descriptor(img)
	if err != nil {
		return err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	if tag != "" {
		// One image per name: a new commit under a tag replaces the old.
		desc.Annotations = map[string]string{refNameAnnotation: tag}
		im.Manifests = slices.DeleteFunc(im.Manifests, func(d v1.Descriptor) bool { return d.Annotations[refNameAnnotation] == tag })
	}
	im.Manifests = append(im.Manifests, *desc)
	data, err := json.Marshal(im)
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(filepath.Join(string(p), "index.json"), data, 0o644)
}

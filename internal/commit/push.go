package commit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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
func WriteLayout(img v1.Image, dir, tag string) error {
	p, err := layout.FromPath(dir)
	if errors.Is(err, os.ErrNotExist) {
		p, err = layout.Write(dir, empty.Index)
	}
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	if tag == "" {
		err = p.AppendImage(img)
	} else {
		// One image per name: a new commit under a tag replaces the old.
		annotations := map[string]string{refNameAnnotation: tag}
		err = p.ReplaceImage(img, match.Name(tag), layout.WithAnnotations(annotations))
	}
	if err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return nil
}

package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/remote"
)

// What Strata keeps next to an image in its repository (recorded
// prefetch lists, layer indexes) is pushed as OCI artifacts whose subject
// is the image's manifest, and found again through the referrers API (or
// the referrers tag of the distribution spec, which go-containerregistry
// falls back to and maintains for registries without the API).

// emptyJSON is the OCI empty descriptor's content, the config of an
// artifact manifest.
var emptyJSON = []byte("{}")

// artifactBlob is one blob of an artifact to push.
type artifactBlob struct {
	mediaType   string
	data        []byte
	annotations map[string]string
}

// pushReferrer pushes an artifact of artifactType holding blobs to repo,
// with the image subject (whose manifest the store keeps) as its subject:
// the blobs, the empty config, then the manifest, so that nothing refers
// to a blob the registry lacks. It returns the manifest's digest.
func (im *images) pushReferrer(ctx context.Context, repo name.Repository, insecure bool, subject digest.Digest,
	artifactType string, blobs []artifactBlob, annotations map[string]string) (digest.Digest, error) {
	opts := im.registryOptions(ctx, repo, insecure)
	layers := []v1.Layer{static.NewLayer(emptyJSON, types.MediaType(ocispec.MediaTypeEmptyJSON))}
	descs := make([]ocispec.Descriptor, 0, len(blobs))
	for _, b := range blobs {
		layers = append(layers, static.NewLayer(b.data, types.MediaType(b.mediaType)))
		descs = append(descs, ocispec.Descriptor{MediaType: b.mediaType, Digest: digest.FromBytes(b.data), Size: int64(len(b.data)), Annotations: b.annotations})
	}
	for _, l := range layers {
		if err := ggcrremote.WriteLayer(repo, l, opts...); err != nil {
			return "", err
		}
	}
	manifest, err := im.d.store.Blobs.Get(subject)
	if err != nil {
		return "", fmt.Errorf("the image's manifest: %w", err)
	}
	var sm struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &sm); err != nil {
		return "", fmt.Errorf("the image's manifest: %w", err)
	}
	if sm.MediaType == "" {
		sm.MediaType = ocispec.MediaTypeImageManifest
	}
	annotations = maps.Clone(annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[ocispec.AnnotationCreated] = time.Now().UTC().Format(time.RFC3339Nano)
	man := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: digest.FromBytes(emptyJSON), Size: int64(len(emptyJSON)), Data: emptyJSON},
		Layers:       descs,
		Subject:      &ocispec.Descriptor{MediaType: sm.MediaType, Digest: subject, Size: int64(len(manifest))},
		Annotations:  annotations,
	}
	man.SchemaVersion = 2
	raw, err := json.Marshal(man)
	if err != nil {
		return "", err
	}
	d := digest.FromBytes(raw)
	if err := ggcrremote.Put(repo.Digest(d.String()), rawManifest{raw: raw, mediaType: types.OCIManifestSchema1}, opts...); err != nil {
		return "", err
	}
	return d, nil
}

// registryOptions are go-containerregistry's options for repo, with the
// daemon's credentials, transport and insecure registries, as its reads.
func (im *images) registryOptions(ctx context.Context, repo name.Repository, insecure bool) []ggcrremote.Option {
	return remote.RemoteOptions(ctx, append(slices.Clone(im.d.remoteOpts), im.remoteOptions(insecure, repo.RegistryStr())...)...)
}

// rawManifest is a manifest to put as it is.
type rawManifest struct {
	raw       []byte
	mediaType types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mediaType, nil }

// maxReferrers bounds the referrers of one image looked at.
const maxReferrers = 64

// referrer is an artifact the referrers list names for an image: where
// it is, and, once load has fetched it, its manifest; and a way to fetch
// its blobs.
type referrer struct {
	digest       v1.Hash
	manifest     *v1.Manifest // set by load
	subject      digest.Digest
	artifactType string
	repo         name.Repository
	opts         []ggcrremote.Option
}

// referrers lists the artifacts of artifactType whose subject is the
// image subject in repo, newest first (by their created annotation), at
// most maxReferrers of them. No manifest is fetched here: callers load
// the ones they use, in order, since an image may have many (a list
// recorded at every build, say) and each costs a round trip.
func (im *images) referrers(ctx context.Context, repo name.Repository, insecure bool, subject digest.Digest, artifactType string) ([]referrer, error) {
	ropts := append(slices.Clone(im.d.remoteOpts), im.remoteOptions(insecure, repo.RegistryStr())...)
	// The listing asks the referrers API and the referrers tag side by
	// side (remote.Referrers); the manifests and blobs after it go
	// through one ggcr puller on the same registry client.
	list, err := remote.Referrers(ctx, repo, subject, ropts...)
	if err != nil {
		return nil, err
	}
	opts := remote.PullOptions(ctx, repo, ropts...)
	puller, err := ggcrremote.NewPuller(opts...)
	if err != nil {
		return nil, err
	}
	opts = append(opts, ggcrremote.Reuse(puller))
	found := slices.DeleteFunc(slices.Clone(list.Manifests), func(desc v1.Descriptor) bool {
		return desc.ArtifactType != artifactType || !desc.MediaType.IsImage()
	})
	// RFC 3339 times in UTC sort as text.
	slices.SortStableFunc(found, func(a, b v1.Descriptor) int {
		return strings.Compare(b.Annotations[ocispec.AnnotationCreated], a.Annotations[ocispec.AnnotationCreated])
	})
	out := make([]referrer, 0, min(len(found), maxReferrers))
	for _, desc := range found[:min(len(found), maxReferrers)] {
		out = append(out, referrer{digest: desc.Digest, subject: subject, artifactType: artifactType, repo: repo, opts: opts})
	}
	return out, nil
}

// load fetches r's manifest and checks that it names the subject and
// artifact type the referrers list says it has.
func (r *referrer) load() error {
	art, err := ggcrremote.Image(r.repo.Digest(r.digest.String()), r.opts...)
	if err != nil {
		return err
	}
	man, err := art.Manifest()
	if err != nil {
		return err
	}
	if man.Subject == nil || man.Subject.Digest.String() != r.subject.String() || man.ArtifactType != r.artifactType {
		return fmt.Errorf("referrer %s of %s is not what the referrers list says it is", r.digest, r.subject)
	}
	r.manifest = man
	return nil
}

// blob fetches the blob desc of the artifact, at most max bytes, and
// checks it against its digest.
func (r referrer) blob(desc v1.Descriptor, max int64) ([]byte, error) {
	if desc.Size < 0 || desc.Size > max {
		return nil, fmt.Errorf("blob %s of %d bytes: more than %d", desc.Digest, desc.Size, max)
	}
	l, err := ggcrremote.Layer(r.repo.Digest(desc.Digest.String()), r.opts...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got.String() != desc.Digest.String() || int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("blob %s: got %d bytes with digest %s", desc.Digest, len(b), got)
	}
	return b, nil
}

// missMemo remembers, for a while, the images the registry had no
// referrer of some kind for, so that it is not asked again and again. An
// image is known by its repository and digest: another repository may
// hold referrers for the same digest.
type missMemo struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func missKey(repo name.Repository, image digest.Digest) string {
	return repo.Name() + "@" + image.String()
}

const (
	missFor   = 10 * time.Minute
	maxMisses = 4096
)

// recent says whether image of repo was noted in the last missFor.
func (mm *missMemo) recent(repo name.Repository, image digest.Digest) bool {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	t, ok := mm.seen[missKey(repo, image)]
	return ok && time.Since(t) < missFor
}

// note notes that the registry had nothing for image of repo now.
func (mm *missMemo) note(repo name.Repository, image digest.Digest) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	if mm.seen == nil || len(mm.seen) >= maxMisses {
		mm.seen = map[string]time.Time{}
	}
	mm.seen[missKey(repo, image)] = time.Now()
}

// forget drops what was noted of image of repo: something was pushed for
// it since.
func (mm *missMemo) forget(repo name.Repository, image digest.Digest) {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	delete(mm.seen, missKey(repo, image))
}

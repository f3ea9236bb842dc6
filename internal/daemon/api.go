package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The control API: JSON over HTTP on the daemon's unix socket.
//
//	POST   /v1/mounts          MountRequest → Mount (?progress=true: Event[Mount] lines, NDJSON)
//	GET    /v1/mounts          → []Mount
//	DELETE /v1/mounts?dir=DIR[&discard=true]  → 204 (409 with uncommitted changes, unless discard)
//	GET    /v1/changes?dir=DIR → []Change
//	POST   /v1/runs            RunRequest → RunInfo
//	POST   /v1/commits         CommitRequest → CommitEvent lines (NDJSON)
//	POST   /v1/resolve         ResolveRequest → Resolved
//	POST   /v1/pushes          PushRequest → CommitEvent lines (NDJSON)
//	POST   /v1/indexes         IndexRequest → Event[IndexResult] lines (NDJSON)
//	GET    /v1/snapshots       → []ContainerdSnapshot
//	GET    /v1/status          → Status
//	GET    /metrics            Prometheus text format
//
// Errors are {"error": "..."} with a 4xx/5xx status.

// MountRequest asks for an image to be mounted read-only at Dir.
type MountRequest struct {
	Ref      string `json:"ref"`
	Dir      string `json:"dir"`
	Platform string `json:"platform,omitempty"` // os/arch[/variant]; default the daemon host's
	Insecure bool   `json:"insecure,omitempty"` // plain HTTP to the ref's registry
	// Writable puts an upper directory in the state root over the image:
	// changes land there, never in the layers.
	Writable bool `json:"writable,omitempty"`
	// Record notes the files opened in the mount, in order, for RecordFor
	// (default DefaultRecordFor) or until the unmount, and keeps the list
	// with the image: later mounts of the image fetch those files at once.
	// RecordPush pushes the list as a referrer of the image too.
	Record     bool          `json:"record,omitempty"`
	RecordFor  time.Duration `json:"recordFor,omitempty"`
	RecordPush bool          `json:"recordPush,omitempty"`
	// PrefetchBase (REPO@DIGEST) names the image Ref was built from: when
	// Ref's image has no recorded list of its own, the base's serves it,
	// its layers being the first of Ref's (a build step's mount).
	PrefetchBase string `json:"prefetchBase,omitempty"`
	// IndexPush pushes, once the image is mounted, the indexes of its
	// plain gzip and tar layers as a referrer of the image (as
	// `strata index` does), so mounts on other machines need not read
	// those layers whole first.
	IndexPush bool `json:"indexPush,omitempty"`
}

// Mount is an image mounted by the daemon.
type Mount struct {
	Dir      string        `json:"dir"`
	Ref      string        `json:"ref"`
	Repo     string        `json:"repo"`
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform"`
	Insecure bool          `json:"insecure,omitempty"`
	Created  time.Time     `json:"created"`
	Layers   []Layer       `json:"layers"` // bottom to top
	// Config is the digest of the image config, kept in the store.
	Config digest.Digest `json:"config,omitempty"`
	// Writable mounts: the active snapshot holding the changes, the
	// commands run in it (for the commit's history) and, in listings,
	// the disk its changes use.
	Writable bool        `json:"writable,omitempty"`
	Snapshot string      `json:"snapshot,omitempty"`
	Runs     []RunRecord `json:"runs,omitempty"`
	// Committed is the last commit of the writable layer.
	Committed   *CommitRecord `json:"committed,omitempty"`
	ChangeBytes int64         `json:"changeBytes,omitempty"`
	// Duration is how long the mount took (resolve, index, mount).
	Duration time.Duration `json:"duration,omitempty"`
	// Recording says that the mount notes the files opened in it.
	Recording bool `json:"recording,omitempty"`
	// IndexArtifact is the artifact the mount pushed its layers' indexes
	// as (MountRequest.IndexPush), IndexPushError why it could not; the
	// mount is up either way.
	IndexArtifact  digest.Digest `json:"indexArtifact,omitempty"`
	IndexPushError string        `json:"indexPushError,omitempty"`

	recording    *recording         // the recording in progress
	stopPrefetch context.CancelFunc // stops the recorded list's prefetch
}

// Layer is one layer of a mounted image.
type Layer struct {
	Digest       digest.Digest     `json:"digest"`
	Size         int64             `json:"size"`
	MediaType    string            `json:"mediaType"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	URLs         []string          `json:"urls,omitempty"`   // where a foreign layer may be read
	DiffID       digest.Digest     `json:"diffID,omitempty"` // from the image config
	FetchedBytes int64             `json:"fetchedBytes"`
	Requests     int64             `json:"requests"`
	// Format is how the layer is read (estargz, zstd:chunked, tar: each
	// served lazily through its index); Local, that its blob is in the
	// store (made here), so reads never reach the registry.
	Format string `json:"format,omitempty"`
	Local  bool   `json:"local,omitempty"`
	// Packed, for a layer fetched whole because it has no lazy reader
	// (plain gzip, zstd), is its blob's format; Format is then tar.
	Packed string `json:"packed,omitempty"`
}

// RunRecord is a command run in a writable mount by `strata run`.
type RunRecord struct {
	Args    []string  `json:"args"`
	Started time.Time `json:"started"`
}

// RunRequest announces a command about to run in the writable mount Dir.
type RunRequest struct {
	Dir  string   `json:"dir"`
	Args []string `json:"args"`
}

// RunInfo is what `strata run` needs to run a command in a writable mount.
type RunInfo struct {
	Dir    string              `json:"dir"`
	Config ocispec.ImageConfig `json:"config"`
	// StateDir is where the runtime's bundles and state go.
	StateDir string `json:"stateDir"`
	// LockFile is held (exclusive flock) for as long as the command runs, so
	// that a commit can tell a run is in progress and runs go one at a time.
	LockFile string `json:"lockFile"`
}

// CommitRecord says what the last commit of a writable mount made.
type CommitRecord struct {
	Ref    string        `json:"ref,omitempty"`
	Digest digest.Digest `json:"digest"`
	Time   time.Time     `json:"time"`
	// Fingerprint is the upper directory's state when it was committed
	// (snapshotter.UpperFingerprint): equal now means nothing changed.
	Fingerprint string `json:"fingerprint"`
	// Changes is the number of changes committed: a mount with none now
	// after a commit of some is back at its image, a change too.
	Changes int `json:"changes,omitempty"`
}

// CommitRequest asks for the changes of the writable mount Dir to become a
// new image, pushed to Ref and/or written to the OCI layout OCILayout
// (PATH[:TAG]).
type CommitRequest struct {
	Dir              string   `json:"dir"`
	Ref              string   `json:"ref,omitempty"`
	OCILayout        string   `json:"ociLayout,omitempty"`
	Format           string   `json:"format,omitempty"`           // estargz (default), gzip, zstd, zstd:chunked, uncompressed
	CompressionLevel *int     `json:"compressionLevel,omitempty"` // nil: the format's default
	Message          string   `json:"message,omitempty"`
	Author           string   `json:"author,omitempty"`
	Changes          []string `json:"changes,omitempty"` // Dockerfile-style config changes
	Docker           bool     `json:"docker,omitempty"`  // Docker v2 schema 2 instead of OCI
	// SourceDateEpoch, in seconds, clamps the new layer's mtimes and sets
	// the config's and the new history entry's times (see
	// CheckSourceDateEpoch).
	SourceDateEpoch *int64 `json:"sourceDateEpoch,omitempty"`
	Insecure        bool   `json:"insecure,omitempty"` // plain HTTP to Ref's registry

	// What a build step sets (strata build):
	// Image, instead of Dir, names an image kept in the store
	// (REPO@DIGEST) that gets Config and History and an empty_layer entry
	// of its own: a build stage that ends with metadata instructions.
	Image string `json:"image,omitempty"`
	// Keep keeps the new image in the store only, with no reference and
	// no layout; CommitResult.Ref then names it in the base's repository
	// (REPO@DIGEST), which mounts it and pushes it without asking the
	// registry for its manifest.
	Keep bool `json:"keep,omitempty"`
	// Config replaces the image config's "config" section whole, before
	// Changes apply.
	Config *v1.Config `json:"config,omitempty"`
	// History entries (empty_layer ones: a Dockerfile's metadata
	// instructions) go before the commit's own entry.
	History []v1.History `json:"history,omitempty"`
	// CreatedBy is the commit's own history entry's created_by (default:
	// Message, else the commands run).
	CreatedBy string `json:"createdBy,omitempty"`
	// HealthStartInterval is the start interval (nanoseconds) a
	// HEALTHCHECK since the stage's FROM set for Config's health check,
	// which v1.Config cannot say; nil when none did (the base's is kept
	// while the health check is the base's).
	HealthStartInterval *time.Duration `json:"healthStartInterval,omitempty"`
	// ResultPlatform (os/arch[/variant]), when set, is the new image's
	// platform, set in its config as BuildKit sets a target platform
	// given explicitly: os and architecture, and the variant when given
	// or when they change (a build's --platform).
	ResultPlatform string `json:"resultPlatform,omitempty"`
}

// ResolveRequest asks for an image's manifest and config without mounting
// it. Ref "scratch" is the empty image (no layers) of the daemon's
// platform, or of Platform.
type ResolveRequest struct {
	Ref      string `json:"ref"`
	Platform string `json:"platform,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
}

// Resolved is an image whose manifest and config are in the store.
type Resolved struct {
	// Ref is REPO@DIGEST: mounting it asks the registry nothing.
	Ref      string        `json:"ref"`
	Repo     string        `json:"repo"`
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform"`
	// Config is the image config as stored.
	Config json.RawMessage `json:"config"`
}

// PushRequest asks for an image kept in the store (a commit or a build's
// result, named REPO@DIGEST) to be pushed to Ref and/or written to the OCI
// layout OCILayout (PATH[:TAG]). Base blobs are mounted or found, never
// downloaded, when Ref is on the image's registry.
type PushRequest struct {
	Image     string `json:"image"`
	Ref       string `json:"ref,omitempty"`
	OCILayout string `json:"ociLayout,omitempty"`
	Insecure  bool   `json:"insecure,omitempty"` // plain HTTP to Ref's registry
	// SourceInsecure: plain HTTP to Image's registry.
	SourceInsecure bool `json:"sourceInsecure,omitempty"`
}

// IndexRequest asks for the indexes of the plain gzip and tar layers of
// the image Ref to be made (reading each such layer whole, once) and
// pushed to Ref's repository as an OCI artifact whose subject is the image.
type IndexRequest struct {
	Ref      string `json:"ref"`
	Platform string `json:"platform,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
	// Prioritize lists paths in the image (relative to its root) that a
	// workload reads first, in order: each gzip layer's index gets a
	// checkpoint just before those it holds, and they are pushed as the
	// image's prefetch list, which mounts fetch at once.
	Prioritize []string `json:"prioritize,omitempty"`
}

// IndexResult says what was indexed and pushed.
type IndexResult struct {
	Ref    string        `json:"ref"`
	Digest digest.Digest `json:"digest"` // the image's manifest
	// Artifact is the pushed index artifact's manifest digest; empty when
	// no layer needed an index.
	Artifact digest.Digest  `json:"artifact,omitempty"`
	Layers   []IndexedLayer `json:"layers"` // bottom to top
	// PrefetchList is the pushed prefetch list's referrer (with
	// Prioritize), Listed how many of the paths it names, and Missing the
	// paths no layer holds as a regular file.
	PrefetchList digest.Digest `json:"prefetchList,omitempty"`
	Listed       int           `json:"listed,omitempty"`
	Missing      []string      `json:"missing,omitempty"`
}

// IndexedLayer is one layer of an IndexResult.
type IndexedLayer struct {
	Digest      digest.Digest `json:"digest"`
	Format      string        `json:"format,omitempty"`
	Entries     int           `json:"entries,omitempty"`
	Checkpoints int           `json:"checkpoints,omitempty"`
	// IndexBytes is the size of the layer's pushed index; 0 when the
	// layer needs none (Note says why).
	IndexBytes int64  `json:"indexBytes,omitempty"`
	Note       string `json:"note,omitempty"`
}

// Event is one line of a streamed answer (a commit's, a push's, an
// index's): progress, then the result or an error.
type Event[T any] struct {
	Progress string `json:"progress,omitempty"`
	Result   *T     `json:"result,omitempty"`
	Error    string `json:"error,omitempty"`
}

// CommitEvent is one line of the streamed answer to a commit: progress,
// then either Result or Error.
type CommitEvent = Event[CommitResult]

// CommitResult describes a commit that succeeded.
type CommitResult struct {
	Ref    string        `json:"ref,omitempty"`
	Digest digest.Digest `json:"digest"`
	// Layer is the new layer; empty for a commit without changes.
	Layer     digest.Digest `json:"layer,omitempty"`
	LayerSize int64         `json:"layerSize,omitempty"`
	Changes   int           `json:"changes"`
	// StreamedBytes are base layer bytes read from the base's registry
	// (a push to another registry, or an OCI layout).
	StreamedBytes int64 `json:"streamedBytes,omitempty"`
	// Warning says what went wrong after the image was published, which
	// does not undo the commit.
	Warning string `json:"warning,omitempty"`
}

// Change is one entry of `strata diff`: Kind is A (added), C (changed) or
// D (deleted), as `docker diff` prints them.
type Change struct {
	Kind string `json:"kind"`
	Path string `json:"path"` // JSON holds only UTF-8: a name that is not reads with U+FFFD here
	// PathBytes is the path's bytes when it is not UTF-8 (base64 in
	// JSON), so the name survives the API.
	PathBytes []byte `json:"pathBytes,omitempty"`
}

// ContainerdSnapshot is a layer the containerd snapshotter serves lazily.
type ContainerdSnapshot struct {
	// Name is the snapshot's name in containerd (the layer's chain ID).
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Ref is the image reference the client named; Client which label set
	// it used: "cri" (containerd's CRI) or "stargz" (BuildKit, nerdctl,
	// ctr-remote); strata pull sends CRI's.
	Ref    string `json:"ref"`
	Client string `json:"client"`
	Layer  Layer  `json:"layer"`
}

// Status describes the daemon.
type Status struct {
	PID int `json:"pid"`
	// Supervised is set when the daemon's connections are kept in a
	// descriptor store (its supervisor, or systemd): a crash or an
	// upgrade then leaves mounts working.
	Supervised bool `json:"supervised"`
	// Supervisor is the PID of strata's supervisor the daemon runs
	// under, 0 for none (systemd, or --supervise=false).
	Supervisor int    `json:"supervisor,omitempty"`
	Root       string `json:"root"` // the state root
	Mounts     int    `json:"mounts"`
	Layers     int    `json:"layers"`
	CacheBytes int64  `json:"cacheBytes"`
	CacheLimit int64  `json:"cacheLimit"`
}

type apiError struct {
	Error string `json:"error"`
}

// MaxSourceDateEpoch is the last second an image config's RFC 3339 time
// can hold: 9999-12-31T23:59:59Z.
const MaxSourceDateEpoch = 253402300799

// CheckSourceDateEpoch refuses a source date epoch an image cannot carry:
// before 1970 or after year 9999.
func CheckSourceDateEpoch(n int64) error {
	if n < 0 || n > MaxSourceDateEpoch {
		return fmt.Errorf("source date epoch %d: want whole seconds from 1970 to the end of year 9999 (%d)", n, MaxSourceDateEpoch)
	}
	return nil
}

package daemon

import (
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// mountRecord is what the metadata DB keeps of a mount (bucket "mounts",
// key the mount directory): what restoring it needs, and nothing that is
// only reported. The API's Mount is made from it and live counters; the
// two change apart. Field names match the records earlier versions wrote.
type mountRecord struct {
	Dir       string        `json:"dir"`
	Ref       string        `json:"ref"`
	Repo      string        `json:"repo"`
	Digest    digest.Digest `json:"digest"`
	Platform  string        `json:"platform"`
	Insecure  bool          `json:"insecure,omitempty"`
	Created   time.Time     `json:"created"`
	Layers    []layerRecord `json:"layers"`
	Config    digest.Digest `json:"config,omitempty"`
	Writable  bool          `json:"writable,omitempty"`
	Snapshot  string        `json:"snapshot,omitempty"`
	Runs      []RunRecord   `json:"runs,omitempty"`
	Committed *CommitRecord `json:"committed,omitempty"`
}

type layerRecord struct {
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	MediaType   string            `json:"mediaType"`
	Annotations map[string]string `json:"annotations,omitempty"`
	URLs        []string          `json:"urls,omitempty"`
	DiffID      digest.Digest     `json:"diffID,omitempty"`
}

func recordOf(m *Mount) mountRecord {
	r := mountRecord{
		Dir: m.Dir, Ref: m.Ref, Repo: m.Repo, Digest: m.Digest, Platform: m.Platform, Insecure: m.Insecure,
		Created: m.Created, Config: m.Config, Writable: m.Writable, Snapshot: m.Snapshot,
		Runs: slices.Clone(m.Runs), Committed: m.Committed,
	}
	for _, l := range m.Layers {
		r.Layers = append(r.Layers, layerRecord{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, Annotations: l.Annotations, URLs: l.URLs, DiffID: l.DiffID})
	}
	return r
}

func (r mountRecord) mount() *Mount {
	m := &Mount{
		Dir: r.Dir, Ref: r.Ref, Repo: r.Repo, Digest: r.Digest, Platform: r.Platform, Insecure: r.Insecure,
		Created: r.Created, Config: r.Config, Writable: r.Writable, Snapshot: r.Snapshot,
		Runs: r.Runs, Committed: r.Committed,
	}
	for _, l := range r.Layers {
		m.Layers = append(m.Layers, Layer{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, Annotations: l.Annotations, URLs: l.URLs, DiffID: l.DiffID})
	}
	return m
}

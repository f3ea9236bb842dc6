package daemon

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// The control API: JSON over HTTP on the daemon's unix socket.
//
//	POST   /v1/mounts          MountRequest → Mount
//	GET    /v1/mounts          → []Mount
//	DELETE /v1/mounts?dir=DIR  → 204
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
	// Duration is how long the mount took (resolve, index, mount).
	Duration time.Duration `json:"duration,omitempty"`
}

// Layer is one layer of a mounted image.
type Layer struct {
	Digest       digest.Digest     `json:"digest"`
	Size         int64             `json:"size"`
	MediaType    string            `json:"mediaType"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	FetchedBytes int64             `json:"fetchedBytes"`
	Requests     int64             `json:"requests"`
}

// Status describes the daemon.
type Status struct {
	PID        int   `json:"pid"`
	Mounts     int   `json:"mounts"`
	Layers     int   `json:"layers"`
	CacheBytes int64 `json:"cacheBytes"`
	CacheLimit int64 `json:"cacheLimit"`
}

type apiError struct {
	Error string `json:"error"`
}

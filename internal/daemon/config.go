package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	sfs "github.com/stratafs/strata/fs"
)

// DefaultConfigPath is read when the daemon is given no --config.
const DefaultConfigPath = "/etc/strata/config.toml"

// Config is the daemon's configuration, read from a TOML file; every field
// has a default, so the file is optional.
type Config struct {
	// Root is the state directory: metadata DB, blobs, chunk cache, layer
	// mountpoints. Default /var/lib/strata.
	Root string `toml:"root"`
	// Socket is the control API's unix socket. Default /run/strata/strata.sock.
	Socket string `toml:"socket"`
	// InsecureRegistries are reached over plain HTTP (or TLS without
	// verification), e.g. ["registry.local:5000"]. localhost and 127.0.0.1
	// registries may use plain HTTP without being listed.
	InsecureRegistries []string `toml:"insecure_registries"`
	// FetchTimeout bounds one read from a registry, retries included, so a
	// registry that is gone turns reads into EIO instead of hangs. Default 30s.
	FetchTimeout Duration `toml:"fetch_timeout"`
	// CacheSize bounds the chunk cache in bytes. Default 10 GiB.
	CacheSize int64 `toml:"cache_size"`
	// MaxConcurrentRequests bounds parallel HTTP requests per layer. Default 16.
	MaxConcurrentRequests int `toml:"max_concurrent_requests"`
	// ContainerdSocket is where containerd's snapshots API is served, for
	// containerd's proxy_plugins (see docs/containerd.md). Default: next to
	// Socket, so /run/strata/containerd.sock; "off" turns it off.
	ContainerdSocket string `toml:"containerd_socket"`
	// ContainerdStargzSocket serves a second, separate snapshotter (its
	// own snapshots and metadata, the same layers) for containerd's proxy
	// plugin named "stargz", the name BuildKit's containerd worker and
	// nerdctl take their lazy path for. containerd collects each
	// snapshotter name's garbage on its own: two names on one socket
	// remove each other's snapshots. Default: ContainerdSocket with
	// "-stargz" before ".sock"; "off" turns it off.
	ContainerdStargzSocket string `toml:"containerd_stargz_socket"`
	// MetricsAddress, when set (e.g. "127.0.0.1:9110"), serves Prometheus
	// metrics over TCP; they are always served on the control socket at /metrics.
	MetricsAddress string `toml:"metrics_address"`
	// PrefetchLists says where a mount looks for a recorded prefetch list
	// of its image (see 'strata mount --record'): "auto" (the store, then
	// a referrer of the image in its registry; the default), "local" (the
	// store only) or "off".
	PrefetchLists string `toml:"prefetch_lists"`
	// LayerIndexes says whether a mount of an image with plain gzip or
	// tar layers looks in the image's registry for their indexes (pushed
	// by 'strata index' or 'strata mount --index-push') before it reads
	// those layers whole to index them: "auto" (the default) or "off".
	LayerIndexes string `toml:"layer_indexes"`
	// IndexContainerdLayers makes the containerd snapshotter read plain
	// gzip layers that have no pushed index once, whole, to index them
	// (and fetch plain zstd ones whole), as 'strata mount' does, instead
	// of leaving them to containerd's own unpack. Default false. (An
	// uncompressed tar layer is indexed either way: reading it is all
	// its index needs.)
	IndexContainerdLayers bool `toml:"index_containerd_layers"`
	// Prefetch says when the rest of a layer is fetched in the
	// background: "auto" (the default: once a workload reads the layer
	// broadly, many files or many bytes, and only while it keeps reading),
	// "all" (every layer, whole, from its mount on) or "off". A demand
	// read always goes first.
	Prefetch string `toml:"prefetch"`
	// PrefetchBudget bounds, in "auto", the compressed bytes one layer's
	// background fetch takes; 0 (the default) means the whole layer.
	PrefetchBudget int64 `toml:"prefetch_budget"`
	// MemoryLimit, when positive, is the daemon's soft memory limit in
	// bytes (the Go runtime's, as GOMEMLIMIT sets it): the garbage
	// collector works harder as the heap nears it. 0 leaves GOMEMLIMIT,
	// or no limit.
	MemoryLimit int64 `toml:"memory_limit"`
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig returns the configuration used when no file says otherwise.
func DefaultConfig() Config {
	return Config{
		Root:                  "/var/lib/strata",
		Socket:                "/run/strata/strata.sock",
		FetchTimeout:          Duration{30 * time.Second},
		CacheSize:             10 << 30,
		MaxConcurrentRequests: 16,
		PrefetchLists:         PrefetchListsAuto,
		LayerIndexes:          LayerIndexesAuto,
		Prefetch:              sfs.PrefetchAuto,
	}
}

// LoadConfig reads path over the defaults. A missing file at the default
// path is not an error; a missing file named explicitly is.
func LoadConfig(path string, explicit bool) (Config, error) {
	cfg := DefaultConfig()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %s", path, tomlError(err))
	}
	return cfg, cfg.Validate()
}

// tomlError says where in the file a decoding error is: the key go-toml
// does not know, or the line and column of a syntax error.
func tomlError(err error) string {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			row, _ := e.Position()
			keys = append(keys, fmt.Sprintf("%s (line %d)", strings.Join(e.Key(), "."), row))
		}
		return "unknown key " + strings.Join(keys, ", ") + " (strata daemon --help lists the keys)"
	}
	var dec *toml.DecodeError
	if errors.As(err, &dec) {
		row, col := dec.Position()
		return fmt.Sprintf("line %d, column %d: %s", row, col, dec.Error())
	}
	return err.Error()
}

// Validate says what is wrong with the configuration, if anything: the
// file's, and again once flags and the environment changed it.
func (c Config) Validate() error {
	for _, r := range c.InsecureRegistries {
		if r == "" || strings.Contains(r, "/") {
			return fmt.Errorf("config: insecure_registries: %q is not a registry HOST[:PORT] (no scheme, no path)", r)
		}
	}
	switch {
	case c.Root == "" || c.Root[0] != '/':
		return fmt.Errorf("config: root must be an absolute path, got %q", c.Root)
	case c.Socket == "" || c.Socket[0] != '/':
		return fmt.Errorf("config: socket must be an absolute path, got %q", c.Socket)
	case c.FetchTimeout.Duration <= 0:
		return fmt.Errorf("config: fetch_timeout must be positive, got %s", c.FetchTimeout)
	case c.CacheSize <= 0:
		return fmt.Errorf("config: cache_size must be positive, got %d", c.CacheSize)
	case c.MemoryLimit < 0:
		return fmt.Errorf("config: memory_limit must not be negative, got %d", c.MemoryLimit)
	case c.MaxConcurrentRequests <= 0:
		return fmt.Errorf("config: max_concurrent_requests must be positive, got %d", c.MaxConcurrentRequests)
	case c.PrefetchLists != "" && c.PrefetchLists != PrefetchListsAuto && c.PrefetchLists != PrefetchListsLocal && c.PrefetchLists != PrefetchListsOff:
		return fmt.Errorf("config: prefetch_lists must be auto, local or off, got %q", c.PrefetchLists)
	case c.LayerIndexes != "" && c.LayerIndexes != LayerIndexesAuto && c.LayerIndexes != LayerIndexesOff:
		return fmt.Errorf("config: layer_indexes must be auto or off, got %q", c.LayerIndexes)
	case sfs.CheckPrefetchPolicy(sfs.PrefetchPolicy{Mode: c.Prefetch, Budget: c.PrefetchBudget}) != nil:
		return fmt.Errorf("config: %w", sfs.CheckPrefetchPolicy(sfs.PrefetchPolicy{Mode: c.Prefetch, Budget: c.PrefetchBudget}))
	}
	return nil
}

// ContainerdSocketOff, as containerd_socket, turns the snapshots API off.
const ContainerdSocketOff = "off"

// containerdSocket returns where the snapshots API is served, "" when off.
func (c Config) containerdSocket() string {
	switch c.ContainerdSocket {
	case ContainerdSocketOff:
		return ""
	case "":
		return filepath.Join(filepath.Dir(c.Socket), "containerd.sock")
	}
	return c.ContainerdSocket
}

// containerdStargzSocket returns where the snapshots API of the name
// "stargz" is served, "" when off.
func (c Config) containerdStargzSocket() string {
	switch c.ContainerdStargzSocket {
	case ContainerdSocketOff:
		return ""
	case "":
		if main := c.containerdSocket(); main != "" {
			return StargzSocket(main)
		}
		return ""
	}
	return c.ContainerdStargzSocket
}

// StargzSocket is the default ContainerdStargzSocket of a containerd
// socket: "-stargz" before its ".sock" (containerd-stargz.sock).
func StargzSocket(containerdSocket string) string {
	return strings.TrimSuffix(containerdSocket, ".sock") + "-stargz.sock"
}

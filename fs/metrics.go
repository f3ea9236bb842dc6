package fs

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricChunkReads = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "chunk_reads_total",
		Help: "Chunk reads by where the bytes came from (cache, fetch).",
	}, []string{"source"})
	metricFetchedBytes = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "fetched_bytes_total",
		Help: "Compressed layer bytes fetched from registries for file reads.",
	})
	metricVerifyFailures = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "verify_failures_total",
		Help: "Chunks whose bytes did not match their digest; each is an EIO, never content.",
	})
	metricPrefetchedStreams = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "prefetched_streams_total",
		Help: "Compressed streams of prioritized files fetched right after a mount (prefetch landmark).",
	})
	metricPassthroughOpens = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "passthrough_opens_total",
		Help: "File opens backed by a whole local file, which the kernel reads without the daemon (FUSE passthrough).",
	})
	metricPassthroughFallbackReads = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "passthrough_fallback_reads_total",
		Help: "Reads of passthrough opens that reached the daemon anyway: go-fuse could not register the backing file.",
	})
	metricFilesAssembled = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "files_assembled_total",
		Help: "Whole files assembled from cached chunks, for passthrough.",
	})
	metricReadErrors = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "strata", Subsystem: "fs", Name: "read_errors_total",
		Help: "File reads answered with an error.",
	})
)

// fuseOpNames names the FUSE opcodes a layer answers, for
// metricRequests; others count as "other".
var fuseOpNames = map[uint32]string{
	1: "lookup", 2: "forget", 3: "getattr", 5: "readlink", 14: "open", 15: "read",
	17: "statfs", 18: "release", 20: "fsync", 22: "getxattr", 23: "listxattr",
	25: "flush", 26: "init", 27: "opendir", 28: "readdir", 29: "releasedir",
	34: "access", 36: "interrupt", 42: "batch_forget", 44: "readdirplus", 46: "lseek",
}

var metricRequests = promauto.NewCounterVec(prometheus.CounterOpts{
	Namespace: "strata", Subsystem: "fs", Name: "requests_total",
	Help: "FUSE requests the layer mounts answered, by operation.",
}, []string{"op"})

// requestCounters are metricRequests' counters by opcode, looked up once.
var requestCounters = func() (cs [64]prometheus.Counter) {
	other := metricRequests.WithLabelValues("other")
	for i := range cs {
		cs[i] = other
		if name, ok := fuseOpNames[uint32(i)]; ok {
			cs[i] = metricRequests.WithLabelValues(name)
		}
	}
	return cs
}()

// countRequest counts one request of opcode op.
func countRequest(op uint32) {
	if op < uint32(len(requestCounters)) {
		requestCounters[op].Inc()
		return
	}
	requestCounters[0].Inc()
}

var metricPushedFiles = promauto.NewCounter(prometheus.CounterOpts{
	Namespace: "strata", Subsystem: "fs", Name: "pushed_files_total",
	Help: "Small cached files handed to the kernel's page cache when overlayfs looked them up, so that reading them costs no request.",
})

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

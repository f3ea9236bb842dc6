// Package remote is where Strata's bytes come from: it resolves image
// references to verified manifests and configs, and reads layer blobs by
// HTTP Range requests. It is built on go-containerregistry (ggcr) for
// reference parsing, credentials and the registry auth handshake.
//
// # Model
//
// An image reference ("ubuntu:24.04", "reg:5000/app@sha256:…") names a
// manifest in a repository. Resolve turns it into an Image: the manifest of
// one platform (chosen from an index when the reference names one), its
// config, and the layer descriptors, bottom to top. A BlobReader then reads
// any byte range of one layer blob on demand; nothing is downloaded whole
// unless the server leaves no other way.
//
//	img, err := remote.Resolve(ctx, "reg:5000/app:v1", remote.WithPlatform(p))
//	l := img.Layers[0]
//	br, err := remote.NewBlobReader(ctx, img.Repo, l.Digest, l.Size)
//	defer br.Close()
//	n, err := br.ReadAtContext(ctx, buf, off)          // one range
//	parts, err := br.Fetch(ctx, []remote.Range{{0, 512}, {4096, 512}}) // many, coalesced
//	err = br.FetchEach(ctx, ranges, func(i int, b []byte) { … })      // each as it arrives
//
// # Guarantees
//
// Resolve returns only verified bytes: the manifest hashes to the digest of a
// digest reference or of the index descriptor that named it (and, for a tag,
// to the registry's Docker-Content-Digest header when sent); the config
// hashes to the manifest's config descriptor. OCI and Docker schema 2
// manifests are accepted; Docker schema 1 and unknown media types fail with
// ErrUnsupportedMediaType.
//
// A BlobReader does NOT verify ranges (a range cannot be checked against a
// blob digest); callers verify what they decode against their own chunk
// digests. It does check that each response is exactly the range asked for
// (ErrRangeMismatch, ErrShortBody). When a server ignores Range and sends
// the whole blob, the blob is spooled once to an unlinked temp file, checked
// against the blob digest, and every later read is served from it.
//
// Requests use closed ranges ("bytes=a-b"). Redirects (to S3, a CDN) are
// followed; the final URL is remembered and used directly, without the
// registry's credentials, until it fails once, then the registry is asked
// again. Temporary failures (408, 429 with Retry-After, 5xx, connection
// resets, short bodies; a wrong Content-Range once) are retried with
// jittered exponential backoff, bounded by WithRetry attempts and by
// WithRequestTimeout for the whole logical read. Other 4xx fail at once.
// Concurrent HTTP requests per reader are bounded (WithMaxConcurrency);
// identical ranges in flight are fetched once, and cancelled when every
// caller waiting for them has given up.
//
// # Errors
//
// Failed exchanges are *Error, whose Temporary method says whether a retry
// could help and whose URL has its query values redacted (presigned URLs
// carry credentials). Every error wraps a containerd errdefs class
// (errdefs.ErrNotFound for 404, errdefs.ErrDataLoss for digest and range
// mismatches, …) so callers map them with errors.Is without knowing HTTP.
//
// # Glossary
//
//   - ref: a reference string as a user types it; parsed by ParseReference.
//   - repo: a name.Repository (registry host + repository path).
//   - dgst, size: a blob's digest and size from a manifest descriptor; size
//     is trusted as the blob's length and checked against every response.
//   - off, len: a byte range of the compressed blob, not of any file in it.
//
// # Dependencies
//
// remote must never import another Strata package, go-fuse, or containerd
// (other than the errdefs error classes). It caches
// nothing on disk beyond a reader's spool file; persistence belongs to store.
package remote

// Package store is where Strata's bytes stay on the local machine: the
// metadata database (bbolt), whole blobs by digest, and the verified
// caches of decompressed file content: chunks, and whole files assembled
// from them (one size limit and LRU for both).
//
// Layout under the state root (default /var/lib/strata):
//
//	meta.db          bbolt: one top-level bucket per concern, owned by the package that uses it
//	blobs/sha256/    whole blobs (manifests, configs, new layers), written ingest → fsync → rename
//	chunks/sha256/   decompressed chunks over 256 KiB, content-addressed by the digest of their bytes
//	packs/           smaller chunks, appended to <id>.pack with an entry in <id>.idx (see packs.go)
//	files/sha256/    whole files assembled from chunks, keyed by FileKey of their chunk digests
//	tmp/             ingest files; emptied at Open
//
// Nothing is trusted when read back: a blob, chunk or whole file whose
// bytes no longer match its digest is removed and reported as missing,
// never returned.
//
// store knows nothing of FUSE, containerd's snapshot model, registries or
// layer formats: it must never import another Strata package, go-fuse,
// go-containerregistry, or containerd (other than the errdefs error
// classes).
package store

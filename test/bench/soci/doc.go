// Command soci-bench mounts a plain gzip image lazily with AWS's
// soci-snapshotter (github.com/awslabs/soci-snapshotter), used as a
// library, so `make bench` can measure SOCI on the same gzip images,
// through the same proxy, as Strata (issue 14).
//
//	soci-bench --root DIR index REF
//
// builds SOCI's index of the gzip image REF with soci's own soci package
// (IndexBuilder.Convert, what `soci convert` runs, at its default span
// size and minimum layer size): it pulls the image into a containerd
// content store under DIR, builds a zTOC per layer and a SOCI index
// manifest v2, and pushes the converted image (an OCI image index holding
// the image manifest, annotated with the SOCI index's digest, beside the
// SOCI index itself; the layers are the same blobs) to REF's repository
// under the tag REF's tag + "-soci". v0.16's snapshotter finds v2 indexes
// by default (v1 indexes through the referrers API are off by default).
// Its last line on stdout is the converted image's reference.
//
//	soci-bench --root DIR REF MOUNTPOINT
//
// mounts REF (the converted image) through soci's own snapshotter
// (service.NewSociSnapshotterService, what soci-snapshotter-grpc serves,
// default config, no prometheus): it plays containerd's part, calling
// Prepare for each layer with the labels containerd's CRI pull sets, so
// the snapshotter mounts each layer that has a zTOC as its own FUSE mount
// (and fetches a layer without one whole, as it does), then mounts the
// View of the top layer (overlayfs over the layer mounts, or a bind mount
// of a single one) at MOUNTPOINT. It prints "ready" on stdout, serves
// until SIGTERM/SIGINT, then unmounts MOUNTPOINT and closes the
// snapshotter, which unmounts every layer.
//
// The registry must be plain HTTP on 127.0.0.1 (the bench's proxy).
//
// It is its own Go module so soci-snapshotter's dependency tree never
// enters Strata's go.mod. It must never import Strata's packages. It needs
// cgo and zlib's static library (Debian's zlib1g-dev): soci builds zTOCs
// with zlib.
package main

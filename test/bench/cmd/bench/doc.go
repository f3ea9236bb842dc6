// Command bench is Strata's benchmark harness (`make bench`). It builds the
// benchmark images once (cached under .bench/), pushes them to a local
// docker-registry in gzip and eStargz form, puts test/proxy between every
// system measured and that registry, runs each workload cold, warm and hot
// for Strata and for the baselines (full pull + unpack with skopeo and
// umoci; stargz-snapshotter's FUSE filesystem through test/bench/stargz;
// soci-snapshotter on the gzip images through test/bench/soci; local
// disk), and the build path (`strata mount --rw`, `run`, `commit`)
// against buildah's from, run, commit and push (build.go), and whole
// Dockerfiles, `strata build --push` against `buildah bud` + `buildah push`
// (dockerfile.go), and writes docs/benchmarks.md.
//
// States of a measurement:
//   - cold: fresh daemon state (or fresh unpack dir) and the page cache
//     dropped; the time includes mounting (or pulling and unpacking).
//   - warm: the same mount right after, page cache dropped again but the
//     system's own cache (Strata's chunk cache, stargz's cache, the unpacked
//     tree) kept.
//   - hot: again at once, nothing dropped.
//
// Must run as root (FUSE, chroot, drop_caches, runc, buildah). It drives Strata only
// through its CLI binary, and must never import Strata's own packages
// (remote, store, fs, snapshotter, internal, cmd): a harness that links the
// code it measures measures the wrong thing.
package main

// Command mkimage builds an image from directories already on this machine
// and pushes it, gzip-compressed, the way most images in the world are.
// `make demo` and the benchmarks use it so no image has to be downloaded.
//
//	mkimage --layer /usr/bin,/usr/sbin,/etc --layer /usr/local/go --push 127.0.0.1:5000/demo:gzip
//
// It must never import Strata's own packages (remote, store, fs,
// snapshotter, internal, cmd): like the benchmarks, it builds images with
// test/fixture, from code that shares nothing with what it feeds.
package main

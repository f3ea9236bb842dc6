// Package commit turns a writable mount's changes into a new image and
// publishes it. It may import snapshotter, remote, store, internal/kmount,
// go-containerregistry, image-spec and BuildKit's Dockerfile parser packages;
// never fs, FUSE or cmd.
//
// The --change lines of strata commit (change.go) edit the new image's
// config the way docker commit --change and a Dockerfile do: each line is one
// Dockerfile instruction, read by BuildKit's own parser, never by hand.
package commit

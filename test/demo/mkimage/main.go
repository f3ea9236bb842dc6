package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	flag "github.com/spf13/pflag"

	"github.com/stratafs/strata/test/fixture"
)

func main() {
	var layers []string
	flag.StringArrayVar(&layers, "layer", nil, "comma-separated host paths making one layer, bottom first (repeatable)")
	push := flag.String("push", "", "reference to push to (plain HTTP for 127.0.0.1)")
	maxBytes := flag.Int64("max-layer-bytes", 400<<20, "stop adding files to a layer past this many bytes")
	flag.Parse()
	if len(layers) == 0 || *push == "" {
		fmt.Fprintln(os.Stderr, "usage: mkimage --layer PATHS [--layer PATHS...] --push REF")
		os.Exit(2)
	}
	if err := run(layers, *push, *maxBytes); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(layers []string, push string, maxBytes int64) error {
	var tars []fixture.TarFile
	for _, spec := range layers {
		paths := strings.Split(spec, ",")
		tmp, err := os.CreateTemp("", "mkimage-*.tar")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		n, err := writeTar(tmp, paths, maxBytes)
		tmp.Close()
		if err != nil {
			return err
		}
		tars = append(tars, fixture.TarFile{Path: tmp.Name(), CreatedBy: "mkimage " + spec})
		fmt.Fprintf(os.Stderr, "layer %s: %d MiB of files\n", spec, n>>20)
	}
	img, err := fixture.FromTars(tars)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(push)
	if err != nil {
		return err
	}
	return remote.Write(ref, img)
}

// writeTar writes the trees at paths (with their parent directories) into
// w as one layer, in sorted order, up to maxBytes of file content.
func writeTar(w io.Writer, paths []string, maxBytes int64) (int64, error) {
	tw := tar.NewWriter(w)
	var total int64
	seen := map[string]bool{}
	addParents := func(p string) error {
		var parents []string
		for d := filepath.Dir(p); d != "/" && !seen[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := addEntry(tw, parents[i], nil); err != nil {
				return err
			}
			seen[parents[i]] = true
		}
		return nil
	}
	for _, root := range paths {
		if err := addParents(root); err != nil {
			return total, err
		}
		var names []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable entries are skipped, as a demo may
			}
			names = append(names, p)
			return nil
		})
		if err != nil {
			return total, err
		}
		sort.Strings(names)
		for _, p := range names {
			if seen[p] {
				continue
			}
			seen[p] = true
			fi, err := os.Lstat(p)
			if err != nil || !(fi.Mode().IsRegular() || fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0) {
				continue
			}
			if fi.Mode().IsRegular() {
				if total+fi.Size() > maxBytes {
					continue
				}
				total += fi.Size()
			}
			if err := addEntry(tw, p, fi); err != nil {
				return total, err
			}
		}
	}
	return total, tw.Close()
}

func addEntry(tw *tar.Writer, p string, fi fs.FileInfo) error {
	if fi == nil {
		var err error
		if fi, err = os.Lstat(p); err != nil {
			return err
		}
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	h.Name = strings.TrimPrefix(p, "/")
	if fi.IsDir() {
		h.Name += "/"
	}
	h.Uname, h.Gname = "", ""
	h.Format = tar.FormatPAX
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return fmt.Errorf("%s: %w", p, errors.Join(err, errors.New("file changed while being read")))
	}
	return nil
}

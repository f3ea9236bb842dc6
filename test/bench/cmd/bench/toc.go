package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// rangeReaderAt reads a blob by HTTP Range requests; only the footer is
// read through it, straight from the registry (not through the proxy).
type rangeReaderAt struct {
	ctx context.Context // one tocBytes call
	url string
}

func (r rangeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("GET %s: %s", r.url, resp.Status)
	}
	return io.ReadFull(resp.Body, p)
}

// layerReaders opens every eStargz layer of the image (TOCs read straight
// from the registry), bottom layer first.
func layerReaders(ctx context.Context, reg, img string) ([]*estargz.Reader, error) {
	ref, err := name.ParseReference(reg+"/"+img+":estargz", name.Insecure)
	if err != nil {
		return nil, err
	}
	im, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m, err := im.Manifest()
	if err != nil {
		return nil, err
	}
	repo := strings.TrimPrefix(ref.Context().RepositoryStr(), "/")
	var out []*estargz.Reader
	for _, l := range m.Layers {
		ra := rangeReaderAt{ctx: ctx, url: "http://" + reg + "/v2/" + repo + "/blobs/" + l.Digest.String()}
		r, err := estargz.Open(io.NewSectionReader(ra, 0, l.Size))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// compressedSize sums, over the files at paths (relative to the image
// root, symlinks resolved), the compressed bytes of their content in the
// eStargz layers: for each file, the gzip streams of its chunks in the
// topmost layer that has it. This is "the compressed size of the files a
// workload reads" that the bytes target compares against.
func compressedSize(layers []*estargz.Reader, paths []string) int64 {
	var total int64
	for _, p := range paths {
		for i := len(layers) - 1; i >= 0; i-- {
			e, ok := layers[i].Lookup(p)
			if !ok {
				continue
			}
			for off := int64(0); off < e.Size; {
				ch, ok := layers[i].ChunkEntryForOffset(p, off)
				if !ok || ch.ChunkSize <= 0 {
					break
				}
				total += ch.NextOffset() - ch.Offset
				off = ch.ChunkOffset + ch.ChunkSize
			}
			break
		}
	}
	return total
}

// tocBytes sums, over the eStargz image's layers, the bytes from the TOC
// offset to the end of the blob (TOC and footer): what a lazy mount must
// fetch before it can serve any file.
func tocBytes(ctx context.Context, reg, img string) (int64, error) {
	ref, err := name.ParseReference(reg+"/"+img+":estargz", name.Insecure)
	if err != nil {
		return 0, err
	}
	im, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		return 0, err
	}
	m, err := im.Manifest()
	if err != nil {
		return 0, err
	}
	repo := strings.TrimPrefix(ref.Context().RepositoryStr(), "/")
	var total int64
	for _, l := range m.Layers {
		ra := rangeReaderAt{ctx: ctx, url: "http://" + reg + "/v2/" + repo + "/blobs/" + l.Digest.String()}
		off, _, err := estargz.OpenFooter(io.NewSectionReader(ra, 0, l.Size))
		if err != nil {
			return 0, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		total += l.Size - off
	}
	return total, nil
}

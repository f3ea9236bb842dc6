package build

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
)

// stdinPeek is how much of standard input is looked at to tell a context
// archive from a Dockerfile: a tar header is 512 bytes, and any compressed
// stream's first one decompresses from far fewer.
const stdinPeek = 64 << 10

// StdinContext reads what `docker build -` reads from r: a tar archive of
// the build context (plain, or gzip, bzip2, xz or zstd compressed), which
// it unpacks into the empty directory dir and for which it returns no
// Dockerfile (the context holds it) and archive true; or else a
// Dockerfile, of at most max bytes, which it returns, dir staying empty as
// the context. The archive
// is unpacked as ADD unpacks one (archive.go): names that climb out are
// refused and nothing is written outside dir.
func StdinContext(ctx context.Context, r io.Reader, dir string, max int) (dockerfile []byte, archive bool, err error) {
	br := bufio.NewReaderSize(r, stdinPeek)
	head, err := br.Peek(stdinPeek)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, fmt.Errorf("reading standard input: %w", err)
	}
	tarred, err := isTarArchive(bytes.NewReader(head))
	if err != nil {
		return nil, false, fmt.Errorf("the context on standard input: %w", err)
	}
	if !tarred {
		df, err := io.ReadAll(io.LimitReader(br, int64(max)+1))
		if err != nil {
			return nil, false, fmt.Errorf("reading the Dockerfile from standard input: %w", err)
		}
		if len(df) > max {
			return nil, false, fmt.Errorf("the Dockerfile on standard input is over %d bytes (a context archive is a tar, maybe compressed)", max)
		}
		return df, false, nil
	}
	dr, err := decompressArchive(br)
	if err != nil {
		return nil, true, fmt.Errorf("the context on standard input: %w", err)
	}
	defer dr.Close()
	root, err := openFsRoot(dir)
	if err != nil {
		return nil, true, err
	}
	defer root.close()
	if _, err := unpackTar(ctx, dr, root, nil); err != nil {
		return nil, true, fmt.Errorf("unpacking the context from standard input: %w", err)
	}
	return nil, true, nil
}

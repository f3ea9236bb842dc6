package build

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
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

// stdinContextPrefix names the directories StdinContextDir makes.
const stdinContextPrefix = "strata-build-context-"

// StdinContextDir makes, in dir (os.TempDir() when ""), the directory a
// context archive from standard input is unpacked into, and holds a lock
// on it while this process lives; done removes it. It first removes those
// earlier builds left whose process is gone (a SIGKILL runs no deferred
// removal) — directories of this user nobody holds — so that a killed
// build's context does not stay behind for good.
func StdinContextDir(dir string) (string, func(), error) {
	if dir == "" {
		dir = os.TempDir()
	}
	sweepStdinContexts(dir)
	// Made under another name, and named for the sweep only once
	// locked: another build's sweep never takes it in between.
	tmp, err := os.MkdirTemp(dir, ".strata-new-context-")
	if err != nil {
		return "", nil, err
	}
	fd, err := unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			unix.Close(fd)
		}
	}
	final := filepath.Join(dir, stdinContextPrefix+strings.TrimPrefix(filepath.Base(tmp), ".strata-new-context-"))
	if err == nil {
		if err = os.Rename(tmp, final); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, fmt.Errorf("the directory for the context on standard input: %w", err)
	}
	return final, func() {
		os.RemoveAll(final)
		unix.Close(fd)
	}, nil
}

// sweepStdinContexts removes the context directories in dir of this user
// that no process holds.
func sweepStdinContexts(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, stdinContextPrefix+"*"))
	for _, m := range matches {
		fd, err := unix.Open(m, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && int(st.Uid) == os.Geteuid() && unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.RemoveAll(m)
		}
		unix.Close(fd)
	}
}

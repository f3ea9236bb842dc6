package build

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
)

// xzMemLimit bounds the memory the xz decoder may use: a hostile archive's
// header may ask for a dictionary of up to 4 GiB. xz -9, the largest
// preset, decodes in 65 MiB.
const xzMemLimit = "256MiB"

// xzDecompress returns r's content decoded by the xz command, as Docker
// decodes ADD's xz archives. Go's standard library reads no xz, and the
// Go decoders at hand take a stream's dictionary size from the stream
// itself, unbounded; xz's --memlimit-decompress refuses an absurd one with
// a clear message. A missing xz command is ErrUnsupportedArchive.
func xzDecompress(r io.Reader) (io.ReadCloser, error) {
	path, err := exec.LookPath("xz")
	if err != nil {
		return nil, fmt.Errorf("%w: xz: the xz command is needed to read it (apt install xz-utils): %v", ErrUnsupportedArchive, err)
	}
	cmd := exec.Command(path, "--decompress", "--stdout", "--quiet", "--threads=1", "--memlimit-decompress="+xzMemLimit)
	cmd.Stdin = r
	x := &xzReader{cmd: cmd}
	cmd.Stderr = &x.stderr
	if x.out, err = cmd.StdoutPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	return x, nil
}

// xzReader reads an xz process's output; at its end, a failed decode is
// the error, not io.EOF. Close stops the process when the reader has not
// read to the end (a tar's end comes before the stream's).
type xzReader struct {
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr bytes.Buffer

	once sync.Once
	err  error
}

func (x *xzReader) Read(p []byte) (int, error) {
	n, err := x.out.Read(p)
	if err == io.EOF {
		if werr := x.wait(false); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (x *xzReader) Close() error {
	x.wait(true)
	return nil
}

// wait reaps the process, killing it first when kill says so, and returns
// its failure.
func (x *xzReader) wait(kill bool) error {
	x.once.Do(func() {
		if kill {
			x.cmd.Process.Kill()
		}
		err := x.cmd.Wait()
		var exit *exec.ExitError
		if err != nil && !(kill && errors.As(err, &exit)) {
			x.err = fmt.Errorf("xz: %s: %w", strings.TrimSpace(x.stderr.String()), err)
		}
	})
	return x.err
}

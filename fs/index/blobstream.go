package index

import (
	"context"
	"fmt"
	"hash"
	"io"
)

// blobStreamRead is the size of each ranged read a blobStream makes: large,
// so that reading a whole layer costs few round trips, and one of them is
// always in flight while the previous one is parsed.
const blobStreamRead = 8 << 20

// blobStream reads a whole blob in order, through large ranged reads of
// an io.ReaderAt (the next one fetched, and hashed, while the current one
// is consumed), hashing every byte for the check against the layer digest.
type blobStream struct {
	ctx  context.Context //nolint:containedctx // the lifetime of one readTar call
	r    io.ReaderAt
	size int64
	hash hash.Hash

	buf     []byte       // the last fetch
	cur     []byte       // what of buf is not handed out yet
	spare   []byte       // the buffer the next fetch fills
	next    chan fetched // the fetch in flight, or nil
	nextOff int64        // where the next fetch starts
	pos     int64        // bytes handed out so far: the offset of the next Read
	err     error        // the blob's own failure (not the parser's)
}

type fetched struct {
	buf []byte
	err error
}

func newBlobStream(ctx context.Context, r io.ReaderAt, size int64, h hash.Hash) *blobStream {
	return &blobStream{ctx: ctx, r: r, size: size, hash: h}
}

// Read implements io.Reader.
func (s *blobStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(s.cur) == 0 {
		if s.pos == s.size {
			return 0, io.EOF
		}
		if err := s.fill(); err != nil {
			s.err = err
			return 0, err
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	s.pos += int64(n)
	return n, nil
}

// fill waits for the fetch in flight (starting one if none is) and starts
// the one after it.
func (s *blobStream) fill() error {
	if s.next == nil {
		s.start()
	}
	var f fetched
	select {
	case f = <-s.next:
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	s.next = nil
	if f.err != nil {
		return f.err
	}
	// The buffer just consumed is free again: the next fetch fills it.
	s.spare = s.buf
	s.buf, s.cur = f.buf, f.buf
	if s.nextOff < s.size {
		s.start()
	}
	return nil
}

// start fetches the range at nextOff in the background.
func (s *blobStream) start() {
	n := min(blobStreamRead, s.size-s.nextOff)
	buf := s.spare
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf, off := buf[:n], s.nextOff
	s.spare = nil
	s.nextOff += n
	ch := make(chan fetched, 1)
	s.next = ch
	go func() {
		if err := s.ctx.Err(); err != nil {
			ch <- fetched{err: err}
			return
		}
		if err := readFullAt(s.r, buf, off); err != nil {
			ch <- fetched{err: fmt.Errorf("reading the layer: %w", err)}
			return
		}
		// Hashed here, beside the parse of the previous buffer: fetches
		// run one after another (each starts once the one before was
		// received), so the hash still sees the blob in order.
		s.hash.Write(buf)
		ch <- fetched{buf: buf}
	}()
}

// finish reads the rest of the blob (what follows the tar's end, if
// anything) and returns its failure, if any.
func (s *blobStream) finish() error {
	if _, err := io.Copy(io.Discard, s); err != nil {
		return err
	}
	return nil
}

// close waits for a fetch still in flight, so that nothing reads r after
// the reader has returned.
func (s *blobStream) close() {
	if s.next != nil {
		<-s.next
		s.next = nil
	}
}

package inflate

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Flags of a gzip member header (RFC 1952, 2.3.1).
const (
	flagHCRC    = 1 << 1
	flagExtra   = 1 << 2
	flagName    = 1 << 3
	flagComment = 1 << 4
)

// member reads a gzip member header, or returns io.EOF where the stream
// ends cleanly before one. Like compress/gzip it ignores the reserved
// flags, MTIME, XFL and OS, and the names are not kept.
func (z *Reader) member() error {
	start := z.in.bitPos() / 8 // members start on a byte
	var fixed [10]byte
	for i := range fixed {
		b, err := z.in.take(8)
		if err != nil {
			if i == 0 && errors.Is(err, errInputEnd) {
				return io.EOF
			}
			return err
		}
		fixed[i] = byte(b)
	}
	if fixed[0] != 0x1f || fixed[1] != 0x8b || fixed[2] != 8 {
		return fmt.Errorf("%w at compressed offset %d: magic number and method % x, want 1f 8b 08", ErrHeader, start, fixed[:3])
	}
	h := headerReader{in: &z.in, crc: crc32.ChecksumIEEE(fixed[:]), longest: &z.longestString}
	flags := fixed[3]
	if flags&flagExtra != 0 {
		lo, hi := h.byte(), h.byte()
		h.skip(int(lo) | int(hi)<<8)
	}
	if flags&flagName != 0 {
		h.skipString()
	}
	if flags&flagComment != 0 {
		h.skipString()
	}
	if flags&flagHCRC != 0 && h.err == nil {
		want := uint16(h.crc)
		got := uint16(h.byte()) | uint16(h.byte())<<8
		if h.err == nil && got != want {
			return fmt.Errorf("%w at compressed offset %d: header CRC %04x, want %04x", ErrHeader, start, got, want)
		}
	}
	if h.err != nil {
		return h.err
	}

	z.lo = z.wr
	z.memberStart = z.out()
	z.crc, z.crcAt = 0, z.wr
	z.state = stBlock
	return z.checkpoint(true, start)
}

// headerReader reads the variable part of a gzip header, keeping its
// CRC-32 and the first error.
type headerReader struct {
	in      *input
	crc     uint32
	err     error
	longest *int // the longest name or comment so far
}

func (h *headerReader) byte() byte {
	if h.err != nil {
		return 0
	}
	v, err := h.in.take(8)
	if err != nil {
		h.err = err
		return 0
	}
	b := byte(v)
	h.crc = crc32.Update(h.crc, crc32.IEEETable, []byte{b})
	return b
}

func (h *headerReader) skip(n int) {
	for range n {
		h.byte()
	}
}

// skipString skips a zero-terminated string. Unlike compress/gzip, which
// refuses names and comments of 512 bytes or more, it takes any length,
// as gzip(1) does.
func (h *headerReader) skipString() {
	n := 0
	for h.byte() != 0 && h.err == nil {
		n++
	}
	*h.longest = max(*h.longest, n)
}

// trailer checks a member's CRC-32 and ISIZE against its output.
func (z *Reader) trailer() error {
	z.in.alignByte()
	crc, err := z.in.take(32)
	if err != nil {
		return err
	}
	size, err := z.in.take(32)
	if err != nil {
		return err
	}
	z.updateCRC()
	n := z.out() - z.memberStart
	if crc != z.crc || size != uint32(n) {
		return fmt.Errorf("%w: member ending at compressed offset %d has CRC-32 %08x and ISIZE %d, its output (%d bytes) %08x",
			ErrChecksum, z.in.bitPos()/8, crc, size, n, z.crc)
	}
	// No reference crosses into the next member: the windows watched are
	// final.
	z.retireUses(true)
	z.state = stMember
	return nil
}

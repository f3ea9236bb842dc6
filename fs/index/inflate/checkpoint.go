package inflate

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sync"
)

// A Checkpoint is a place in a gzip stream where decoding can resume: a
// DEFLATE block boundary inside a member, or the start of a member.
//
// Offsets count from the start of the whole stream (every member, header
// and trailer included) on the compressed side, and from the start of the
// concatenated output of every member (what compress/gzip's multistream
// reader returns) on the uncompressed side.
type Checkpoint struct {
	// In is the offset of the first compressed byte that holds bits not
	// yet decoded: Resume's input starts with this byte.
	In int64
	// Bits is how many of the low-order bits of the byte at In are
	// already decoded, 0 to 7 (DEFLATE fills bytes from their least
	// significant bit). Always 0 at a member start.
	Bits uint8
	// Out is the offset in the output of the first byte decoded after the
	// checkpoint.
	Out int64
	// AtMember says the checkpoint is at the start of a gzip member: In is
	// the offset of its header, and the fields below are zero, because
	// nothing before a member matters to it.
	AtMember bool
	// MemberOut is how many bytes of output the checkpoint's member has
	// before Out; the member's output starts at Out-MemberOut.
	MemberOut int64
	// CRC is the CRC-32 (IEEE) of those MemberOut bytes, which lets a
	// reader that decodes to the member's end check its trailer.
	CRC uint32
	// Window is the output just before Out that back-references may
	// reach: the last min(MemberOut, 32 KiB) bytes of the member's output.
	// It is never shared with a reader's buffers.
	Window []byte
}

// Validate says whether cp is a checkpoint the decoder could have made;
// Resume and UnmarshalBinary refuse one that is not, with ErrCheckpoint.
func (cp Checkpoint) Validate() error {
	switch {
	case cp.In < 0 || cp.Out < 0:
		return fmt.Errorf("%w: negative offset (in %d, out %d)", ErrCheckpoint, cp.In, cp.Out)
	case cp.Bits > 7:
		return fmt.Errorf("%w: bit offset %d, not 0 to 7", ErrCheckpoint, cp.Bits)
	case cp.AtMember && (cp.Bits != 0 || cp.MemberOut != 0 || cp.CRC != 0 || len(cp.Window) != 0):
		return fmt.Errorf("%w: at a member start, but with a bit offset, member output, CRC or window", ErrCheckpoint)
	case cp.MemberOut < 0 || cp.MemberOut > cp.Out:
		return fmt.Errorf("%w: member output %d, not within 0 to %d", ErrCheckpoint, cp.MemberOut, cp.Out)
	case int64(len(cp.Window)) != min(cp.MemberOut, windowSize):
		return fmt.Errorf("%w: window of %d bytes, want %d", ErrCheckpoint, len(cp.Window), min(cp.MemberOut, windowSize))
	}
	return nil
}

// The encoding of a Checkpoint:
//
//	version    1 byte, encodingVersion
//	flags      1 byte: flagAtMember, the other bits zero
//	bits       1 byte, 0 to 7
//	in, out    uvarints
//
// and, unless at a member start:
//
//	memberOut  uvarint
//	crc        4 bytes, little-endian
//	window     the rest: the window as raw DEFLATE (compress/flate); its
//	           length is min(memberOut, 32 KiB)
const (
	encodingVersion = 1
	flagAtMember    = 1
	windowLevel     = flate.BestSpeed
)

var windowWriters = sync.Pool{New: func() any {
	w, err := flate.NewWriter(io.Discard, windowLevel)
	if err != nil {
		panic(err) // the level is valid
	}
	return w
}}

// AppendBinary appends the encoding of cp to b; the window is compressed.
func (cp Checkpoint) AppendBinary(b []byte) ([]byte, error) {
	if err := cp.Validate(); err != nil {
		return b, err
	}
	flags := byte(0)
	if cp.AtMember {
		flags |= flagAtMember
	}
	b = append(b, encodingVersion, flags, cp.Bits)
	b = binary.AppendUvarint(b, uint64(cp.In))
	b = binary.AppendUvarint(b, uint64(cp.Out))
	if cp.AtMember {
		return b, nil
	}
	b = binary.AppendUvarint(b, uint64(cp.MemberOut))
	b = binary.LittleEndian.AppendUint32(b, cp.CRC)
	buf := bytes.NewBuffer(b)
	w := windowWriters.Get().(*flate.Writer)
	defer windowWriters.Put(w)
	w.Reset(buf)
	if _, err := w.Write(cp.Window); err != nil {
		return b, err
	}
	if err := w.Close(); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}

// MarshalBinary returns the encoding of cp.
func (cp Checkpoint) MarshalBinary() ([]byte, error) {
	return cp.AppendBinary(nil)
}

// UnmarshalBinary sets cp from an encoding made by AppendBinary. Anything
// else, however it was made, is refused with an error wrapping
// ErrCheckpoint, and leaves cp as it was.
func (cp *Checkpoint) UnmarshalBinary(data []byte) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCheckpoint, fmt.Sprintf(format, args...))
	}
	if len(data) < 3 {
		return bad("encoding of %d bytes is too short", len(data))
	}
	if data[0] != encodingVersion {
		return bad("encoding version %d, want %d", data[0], encodingVersion)
	}
	if data[1]&^flagAtMember != 0 {
		return bad("unknown flags %#x", data[1])
	}
	c := Checkpoint{AtMember: data[1]&flagAtMember != 0, Bits: data[2]}
	rest := data[3:]
	var err error
	if c.In, rest, err = parseOffset(rest, "compressed offset"); err != nil {
		return err
	}
	if c.Out, rest, err = parseOffset(rest, "uncompressed offset"); err != nil {
		return err
	}
	if !c.AtMember {
		if c.MemberOut, rest, err = parseOffset(rest, "member output"); err != nil {
			return err
		}
		if len(rest) < 4 {
			return bad("truncated CRC")
		}
		c.CRC = binary.LittleEndian.Uint32(rest)
		rest = rest[4:]
		if c.MemberOut > c.Out {
			return bad("member output %d past uncompressed offset %d", c.MemberOut, c.Out)
		}
		if c.Window, err = inflateWindow(rest, int(min(c.MemberOut, windowSize))); err != nil {
			return err
		}
		rest = nil
	}
	if len(rest) != 0 {
		return bad("%d bytes after the encoding", len(rest))
	}
	if err := c.Validate(); err != nil {
		return err
	}
	*cp = c
	return nil
}

// parseOffset parses a uvarint that must fit an int64.
func parseOffset(b []byte, what string) (int64, []byte, error) {
	v, n := binary.Uvarint(b)
	switch {
	case n == 0:
		return 0, b, fmt.Errorf("%w: truncated %s", ErrCheckpoint, what)
	case n < 0:
		return 0, b, fmt.Errorf("%w: %s overflows 64 bits", ErrCheckpoint, what)
	case v > math.MaxInt64:
		return 0, b, fmt.Errorf("%w: %s %d is negative as an int64", ErrCheckpoint, what, v)
	}
	return int64(v), b[n:], nil
}

// inflateWindow decompresses a window that must be exactly size bytes, the
// whole of comp, reading no more than size+1 bytes of output from hostile
// input.
func inflateWindow(comp []byte, size int) ([]byte, error) {
	src := bytes.NewReader(comp) // an io.ByteReader: flate reads no further than its stream
	r := flate.NewReader(src)
	defer r.Close()
	window := make([]byte, size)
	if n, err := io.ReadFull(r, window); err != nil {
		return nil, fmt.Errorf("%w: window: %d bytes of %d: %v", ErrCheckpoint, n, size, err)
	}
	var one [1]byte
	switch _, err := io.ReadFull(r, one[:]); {
	case err == nil:
		return nil, fmt.Errorf("%w: window longer than the %d bytes its member output allows", ErrCheckpoint, size)
	case err != io.EOF:
		return nil, fmt.Errorf("%w: window: %v", ErrCheckpoint, err)
	case src.Len() != 0:
		return nil, fmt.Errorf("%w: %d bytes after the window", ErrCheckpoint, src.Len())
	}
	return window, nil
}

package index

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// Entries and chunks are stored in a small binary form of our own rather
// than JSON: decoding a value is the hot path of every FUSE LOOKUP and
// READ (profiling a find over a 50,000-file layer showed encoding/json
// dominating the daemon's CPU), and the values are private to this
// package, written and read by the same code with indexVersion guarding
// any change, so they need no self-description or schema evolution.
//
//	Entry  uvarint Ino, byte Type, uvarint Mode, UID, GID, varint Size,
//	       varint ModTime.Unix(), uvarint ModTime.Nanosecond(), string LinkTarget,
//	       uvarint DevMajor, DevMinor, Nlink,
//	       uvarint len(Xattrs), then per xattr, sorted by name: string name, string value
//	Chunk  varint FileOffset, Length, BlobOffset, BlobLength, Inner, byte Encoding, digest
//	string uvarint length, bytes
//	digest byte 1 then the 32 bytes of a lowercase-hex sha256 digest (nearly every chunk's),
//	       or byte 0 then the digest as a string
//
// The zero ModTime is stored as its Unix seconds and decodes back to the
// zero time.Time. Decoded times are in UTC, as format readers make them.
//
// Decoding checks every length against the bytes left and refuses
// trailing bytes, so a torn or garbled value is an error wrapping
// ErrInvalid, never a panic or an allocation bigger than the value.

const (
	digestTagString = 0
	digestTagSHA256 = 1
	sha256Prefix    = "sha256:"
	sha256HexLen    = 64
)

var (
	errTruncated = errors.New("truncated")
	errOverflow  = errors.New("number out of range")
	errTrailing  = errors.New("trailing bytes")
	errDigestTag = errors.New("unknown digest form")
)

// appendEntry appends the stored form of e to dst.
func appendEntry(dst []byte, e *Entry) []byte {
	dst = binary.AppendUvarint(dst, e.Ino)
	dst = append(dst, byte(e.Type))
	dst = binary.AppendUvarint(dst, uint64(e.Mode))
	dst = binary.AppendUvarint(dst, uint64(e.UID))
	dst = binary.AppendUvarint(dst, uint64(e.GID))
	dst = binary.AppendVarint(dst, e.Size)
	dst = binary.AppendVarint(dst, e.ModTime.Unix())
	dst = binary.AppendUvarint(dst, uint64(e.ModTime.Nanosecond()))
	dst = appendString(dst, e.LinkTarget)
	dst = binary.AppendUvarint(dst, uint64(e.DevMajor))
	dst = binary.AppendUvarint(dst, uint64(e.DevMinor))
	dst = binary.AppendUvarint(dst, uint64(e.Nlink))
	dst = binary.AppendUvarint(dst, uint64(len(e.Xattrs)))
	if len(e.Xattrs) == 0 {
		return dst
	}
	for _, k := range slices.Sorted(maps.Keys(e.Xattrs)) {
		dst = appendString(dst, k)
		dst = appendString(dst, string(e.Xattrs[k]))
	}
	return dst
}

// decodeEntry decodes the stored form of an entry.
func decodeEntry(b []byte) (Entry, error) {
	d := decoder{b: b}
	var e Entry
	e.Ino = d.uvarint()
	e.Type = Type(d.byte())
	e.Mode = d.uint32()
	e.UID = d.uint32()
	e.GID = d.uint32()
	e.Size = d.varint()
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= uint64(time.Second) {
		d.fail(errOverflow)
	}
	e.ModTime = time.Unix(sec, int64(nsec)).UTC()
	e.LinkTarget = string(d.bytes())
	e.DevMajor = d.uint32()
	e.DevMinor = d.uint32()
	e.Nlink = d.uint32()
	e.Xattrs = d.xattrs()
	if err := d.finish(); err != nil {
		return Entry{}, fmt.Errorf("%w: stored entry: %v", ErrInvalid, err)
	}
	return e, nil
}

// appendChunk appends the stored form of c to dst.
func appendChunk(dst []byte, c *Chunk) []byte {
	dst = binary.AppendVarint(dst, c.FileOffset)
	dst = binary.AppendVarint(dst, c.Length)
	dst = binary.AppendVarint(dst, c.BlobOffset)
	dst = binary.AppendVarint(dst, c.BlobLength)
	dst = binary.AppendVarint(dst, c.Inner)
	dst = append(dst, byte(c.Encoding))
	s := string(c.Digest)
	if isSHA256Hex(s) {
		dst, _ = hex.AppendDecode(append(dst, digestTagSHA256), []byte(s[len(sha256Prefix):])) // cannot fail: checked above
		return dst
	}
	return appendString(append(dst, digestTagString), s)
}

// decodeChunk decodes the stored form of a chunk.
func decodeChunk(b []byte) (Chunk, error) {
	d := decoder{b: b}
	var c Chunk
	c.FileOffset = d.varint()
	c.Length = d.varint()
	c.BlobOffset = d.varint()
	c.BlobLength = d.varint()
	c.Inner = d.varint()
	c.Encoding = Encoding(d.byte())
	switch d.byte() {
	case digestTagSHA256:
		if sum := d.take(sha256HexLen / 2); sum != nil {
			var buf [len(sha256Prefix) + sha256HexLen]byte
			copy(buf[:], sha256Prefix)
			hex.Encode(buf[len(sha256Prefix):], sum)
			c.Digest = digest.Digest(buf[:])
		}
	case digestTagString:
		c.Digest = digest.Digest(d.bytes())
	default:
		d.fail(errDigestTag)
	}
	if err := d.finish(); err != nil {
		return Chunk{}, fmt.Errorf("%w: stored chunk: %v", ErrInvalid, err)
	}
	return c, nil
}

// isSHA256Hex reports whether s is "sha256:" and 64 lowercase hex digits,
// the only spelling that survives a trip through 32 raw bytes.
func isSHA256Hex(s string) bool {
	if len(s) != len(sha256Prefix)+sha256HexLen || s[:len(sha256Prefix)] != sha256Prefix {
		return false
	}
	for i := len(sha256Prefix); i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// decoder reads a stored value front to back. The first problem sticks:
// later reads return zero values, and finish reports it.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		return errTrailing
	}
	return d.err
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errTruncated) // n < 0 is an overlong varint: garbage either way
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errTruncated)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.fail(errOverflow)
		return 0
	}
	return uint32(v)
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail(errTruncated)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// take returns the next n bytes, not copied, or nil if fewer are left.
func (d *decoder) take(n uint64) []byte {
	if n > uint64(len(d.b)) {
		d.fail(errTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// bytes returns a length-prefixed string, not copied.
func (d *decoder) bytes() []byte { return d.take(d.uvarint()) }

func (d *decoder) xattrs() map[string][]byte {
	n := d.uvarint()
	if n == 0 {
		return nil
	}
	if n > uint64(len(d.b))/2 { // each takes at least two length bytes
		d.fail(errTruncated)
		return nil
	}
	m := make(map[string][]byte, n)
	for range n {
		k := d.bytes()
		v := d.bytes()
		if d.err != nil {
			return nil
		}
		m[string(k)] = append(make([]byte, 0, len(v)), v...)
	}
	return m
}

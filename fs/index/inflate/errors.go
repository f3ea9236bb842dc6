package inflate

import (
	"errors"
	"fmt"
)

// The classes of error the package returns, wrapped with the detail and
// checked with errors.Is. A truncated stream is io.ErrUnexpectedEOF, as in
// compress/gzip; an empty one (no member at all) is io.EOF from NewReader.
var (
	// ErrHeader is a gzip member header that is not one: bad magic
	// number, a compression method other than DEFLATE, or a header CRC
	// (FHCRC) that does not match.
	ErrHeader = errors.New("inflate: invalid gzip header")
	// ErrChecksum is a member whose output does not match the CRC-32 or
	// the length (ISIZE) of its trailer.
	ErrChecksum = errors.New("inflate: gzip checksum mismatch")
	// ErrCorrupt is DEFLATE data that breaks RFC 1951: a reserved block
	// type, a stored block whose length check fails, code lengths that are
	// over-subscribed or incomplete, an invalid code, a distance that
	// reaches before the start of the member's output.
	ErrCorrupt = errors.New("inflate: corrupt DEFLATE data")
	// ErrCheckpoint is a Checkpoint that cannot be resumed from, or an
	// encoding of one that cannot be parsed.
	ErrCheckpoint = errors.New("inflate: invalid checkpoint")
)

// errInputEnd is the input ending before the decoder can finish what it
// started; Read turns it into io.ErrUnexpectedEOF, or into a clean io.EOF
// for a reader made by Resume, whose input may be a span.
var errInputEnd = errors.New("inflate: input ends")

// corrupt is an ErrCorrupt that says where, in the compressed stream, the
// decoder found the data it could not decode.
func corrupt(bitPos int64, format string, args ...any) error {
	return fmt.Errorf("%w at compressed offset %d (bit %d): %s",
		ErrCorrupt, bitPos/8, bitPos%8, fmt.Sprintf(format, args...))
}

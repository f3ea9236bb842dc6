package inflate

import "io"

// inBufSize is the size of a Reader's input buffer.
const inBufSize = 64 << 10

// input is the compressed stream as a bit reader. Bytes are read from src
// into buf; bits are taken from buf into bits, least significant bit first,
// as DEFLATE packs them.
//
// Only the low nb bits of bits are valid. The bits above them may hold
// copies of the bytes at buf[pos:] (the fast decoder loads eight bytes at
// a time and advances pos only by the whole bytes it kept); every load ORs
// a byte in at the position where such a copy already holds the same
// bits, so the copies are harmless. Code that moves pos without going
// through bits must clear them first (dropBits).
type input struct {
	src    io.Reader
	srcErr error // the error src returned; io.EOF once it is exhausted
	buf    []byte
	pos    int   // buf[pos:end] are not yet in bits
	end    int   //
	base   int64 // offset in the compressed stream of buf[0]
	bits   uint64
	nb     uint
}

// bitPos is the number of bits of the compressed stream consumed so far.
func (in *input) bitPos() int64 {
	return (in.base+int64(in.pos))*8 - int64(in.nb)
}

// refill reads from src until at least want bytes are buffered (want is at
// most len(buf)), or src fails. It returns whether want bytes are there.
func (in *input) refill(want int) bool {
	if in.end-in.pos >= want {
		return true
	}
	if in.srcErr != nil {
		return false
	}
	if in.pos > 0 {
		n := copy(in.buf, in.buf[in.pos:in.end])
		in.base += int64(in.pos)
		in.pos, in.end = 0, n
	}
	for empty := 0; in.end-in.pos < want; {
		n, err := in.src.Read(in.buf[in.end:])
		in.end += n
		if err != nil {
			in.srcErr = err
			return in.end-in.pos >= want
		}
		if n == 0 {
			if empty++; empty == 100 {
				in.srcErr = io.ErrNoProgress
				return false
			}
		}
	}
	return true
}

// inputErr is the error for input that ended, or failed, before the
// decoder had what it needed.
func (in *input) inputErr() error {
	if in.srcErr == nil || in.srcErr == io.EOF {
		return errInputEnd
	}
	return in.srcErr
}

// need makes at least n bits (n <= 56) valid in bits, reading bytes one at
// a time.
func (in *input) need(n uint) error {
	for in.nb < n {
		if in.pos == in.end && !in.refill(1) {
			return in.inputErr()
		}
		in.bits |= uint64(in.buf[in.pos]) << in.nb
		in.pos++
		in.nb += 8
	}
	return nil
}

// take consumes and returns the next n bits (n <= 32).
func (in *input) take(n uint) (uint32, error) {
	if err := in.need(n); err != nil {
		return 0, err
	}
	v := uint32(in.bits & (1<<n - 1))
	in.bits >>= n
	in.nb -= n
	return v, nil
}

// alignByte drops the bits up to the next byte boundary.
func (in *input) alignByte() {
	drop := in.nb % 8
	in.bits >>= drop
	in.nb -= drop
}

// dropBits clears the bits above nb, before pos moves without them.
func (in *input) dropBits() {
	in.bits &= 1<<in.nb - 1
}

// sym decodes one symbol with table t (first level of root bits), reading
// bytes one at a time as the code needs them. It returns the symbol's
// entry, whose code bits are consumed; a bad entry is returned as it is.
func (in *input) sym(t []uint32, root uint) (uint32, error) {
	for {
		e := t[in.bits&(1<<root-1)]
		n := uint(e & entBitsMask)
		if e&entSub != 0 && n <= in.nb {
			sub := uint(e>>entExtraShft) & 0xf
			e2 := t[int(e>>entValShift)+int(in.bits>>root)&(1<<sub-1)]
			if n2 := root + uint(e2&entBitsMask); n2 <= in.nb {
				in.bits >>= n2
				in.nb -= n2
				return e2, nil
			}
		} else if e&entSub == 0 && n <= in.nb {
			in.bits >>= n
			in.nb -= n
			return e, nil
		}
		if err := in.need(in.nb + 8); err != nil {
			return 0, err
		}
	}
}

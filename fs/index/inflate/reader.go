package inflate

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Sizes of the output buffer. The decoder writes into one linear buffer
// that keeps the last windowSize bytes of output before the bytes not yet
// read, so a back-reference is a copy within the buffer; when the buffer
// is full and read, its last windowSize bytes slide to the front.
const (
	windowSize = 32 << 10 // how far back DEFLATE may refer
	histSize   = windowSize + 256<<10
	// copySlack is how far past a back-reference's end a copy may write
	// (it copies whole words).
	copySlack = 16
	// histLimit is where a batch of decoding stops: past it a longest
	// back-reference, and its slack, may not fit.
	histLimit = histSize - maxMatch - copySlack
)

// state is what the compressed stream holds next.
type state uint8

const (
	stMember  state = iota // a gzip member header, or the end of the stream
	stBlock                // a DEFLATE block header
	stStored               // the rest of a stored block
	stHuffman              // the rest of a Huffman-coded block
	stTrailer              // a member's trailer: CRC-32 and ISIZE
)

// A Reader decodes a gzip stream. It is made by NewReader, to read a whole
// stream and report checkpoints, or by Resume, to read on from one.
type Reader struct {
	in input

	hist   []byte // output: hist[:rd] is history, hist[rd:wr] not yet read
	rd, wr int
	lo     int   // hist[lo:] is the current member's output (no reference reaches before it)
	base   int64 // uncompressed offset of hist[0]

	state   state
	final   bool // the current block is the member's last
	stored  int  // bytes left in the current stored block
	skip    uint // bits to drop before the first block header (Resume)
	lit     *litTable
	dist    *distTable
	dynLit  litTable
	dynDist distTable

	memberStart int64  // uncompressed offset where the current member starts
	crc         uint32 // CRC-32 of the member's output before hist[crcAt]
	crcAt       int

	span         bool // input may end anywhere: its end is a clean io.EOF
	every        int64
	onCheckpoint func(Checkpoint) error
	lastCP       int64 // Out of the last checkpoint; -1 before the first

	progEvery, progNext int64 // see OnProgress
	onProgress          func(out, in int64)

	// uses watches the references into the windows of the checkpoints
	// reported less than windowSize bytes of output ago (windowuse.go).
	uses []*windowUse

	// kept are the recent boundaries kept for CheckpointBefore, oldest
	// first, while keepReach > 0 (boundaries.go); spare, windows to reuse.
	keepReach int64
	kept      []Checkpoint
	spare     [][]byte

	err error
	// longestString is the longest name or comment of the headers so far:
	// compress/gzip refuses those of 512 bytes or more, the tests allow
	// for it.
	longestString int
}

// NewReader returns a Reader of the gzip stream r, which must start with a
// gzip member header: like compress/gzip's Reader in its default
// multistream mode, it reads every member up to the end of r, checks each
// member's CRC-32 and ISIZE at its end, and returns the concatenated
// output; like gzip.NewReader, it reads the first header at once, and
// returns io.EOF if r is empty.
//
// While decoding, the Reader calls onCheckpoint (unless it is nil) with a
// Checkpoint at Out 0, and then at the first block boundary or member
// start after at least every bytes of output have passed since the last
// one (every <= 0: at each of them). The callback runs inside Read and
// owns the checkpoint's Window, but the Reader still writes to it: the
// bytes of the window that the output after the checkpoint never refers
// to are zeroed once the Reader has decoded windowSize bytes past it (or
// the member or stream ended, or Read returned an error), which is when
// the window is final. An error the callback returns is returned by Read.
// Out counts decoded output, which may be ahead of what Read has returned.
func NewReader(r io.Reader, every int64, onCheckpoint func(Checkpoint) error) (*Reader, error) {
	z := newReader(r)
	z.every, z.onCheckpoint, z.lastCP = every, onCheckpoint, -1
	if err := z.member(); err != nil {
		if errors.Is(err, errInputEnd) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return z, nil
}

// Resume returns a Reader of the output from cp.Out on, decoding the
// compressed bytes r gives, which must be those of the stream from cp.In
// on (for instance fetched by a range request).
//
// The input may stop anywhere: the Reader returns every byte it can
// decode from the input it has and then io.EOF. So a caller that wants
// the output between cp and the next checkpoint, next, gives the bytes
// from cp.In up to next.In (and the byte at next.In too when next.Bits is
// not 0: it holds the span's last bits), and reads next.Out-cp.Out bytes,
// with io.ReadFull, which says io.ErrUnexpectedEOF if they are not all
// there. Given more, the Reader decodes on, into the following members
// too. Corrupt data is still an error, and a member whose trailer the
// Reader reaches is checked with the CRC-32 and length cp carries.
func Resume(r io.Reader, cp Checkpoint) (*Reader, error) {
	if err := cp.Validate(); err != nil {
		return nil, err
	}
	z := newReader(r)
	z.span = true
	z.in.base = cp.In
	z.base = cp.Out - int64(len(cp.Window))
	z.wr = copy(z.hist, cp.Window)
	z.rd = z.wr
	z.crcAt = z.wr
	if cp.AtMember {
		z.lo = z.wr
		z.state = stMember
		return z, nil
	}
	z.memberStart = cp.Out - cp.MemberOut
	z.crc = cp.CRC
	z.skip = uint(cp.Bits)
	z.state = stBlock
	return z, nil
}

func newReader(r io.Reader) *Reader {
	return &Reader{
		in:   input{src: r, buf: make([]byte, inBufSize)},
		hist: make([]byte, histSize),
	}
}

// Read reads decoded output into p. It returns io.EOF after the last
// member's trailer (or, for a Reader made by Resume, where its input
// ends), and the first error that stops the decoder after the output
// before it.
func (z *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for z.rd == z.wr {
		if z.err != nil {
			return 0, z.err
		}
		z.decode()
	}
	n := copy(p, z.hist[z.rd:z.wr])
	z.rd += n
	return n, nil
}

// WriteTo writes the decoded output to w until io.EOF, which it does not
// return, or an error. It implements io.WriterTo, which io.Copy uses: the
// output goes to w straight from the decoder's buffer.
func (z *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		for z.rd == z.wr {
			if z.err == io.EOF {
				return total, nil
			}
			if z.err != nil {
				return total, z.err
			}
			z.decode()
		}
		n, err := w.Write(z.hist[z.rd:z.wr])
		z.rd += n
		total += int64(n)
		if err == nil && z.rd < z.wr {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
}

// out is the uncompressed offset of the next byte to decode.
func (z *Reader) out() int64 { return z.base + int64(z.wr) }

// OnProgress makes the Reader call fn about every every bytes of output
// it decodes (a back-reference may take it up to 258 bytes further, a
// stored block to the block's end) with how much output it has decoded
// and how many bytes of the compressed stream, counted from its start,
// that took: a Reader made by Resume at an earlier checkpoint decodes at
// least that output from the bytes up to in. Call it before the first
// Read; fn runs inside Read.
func (z *Reader) OnProgress(every int64, fn func(out, in int64)) {
	z.progEvery, z.progNext, z.onProgress = max(every, 1), z.out()+max(every, 1), fn
}

// noteProgress calls onProgress if the output has passed progNext.
func (z *Reader) noteProgress() {
	if z.onProgress != nil && z.out() >= z.progNext {
		z.onProgress(z.out(), (z.in.bitPos()+7)/8)
		z.progNext = z.out() + z.progEvery
	}
}

// batchEnd is where in hist the fast decoder stops for this batch: at
// histLimit, or sooner where progress is due.
func (z *Reader) batchEnd() int {
	if z.onProgress == nil {
		return histLimit
	}
	return int(max(min(int64(histLimit), z.progNext-z.base), 0))
}

// decode decodes a batch of output into hist, after sliding the window to
// its front if hist is full, and sets z.err when the decoder stops.
func (z *Reader) decode() {
	if z.wr >= histLimit {
		z.slide()
	}
	for z.err == nil && z.wr < histLimit {
		var err error
		switch z.state {
		case stMember:
			err = z.member()
		case stBlock:
			err = z.blockHeader()
		case stStored:
			err = z.storedData()
		case stHuffman:
			err = z.huffman()
		case stTrailer:
			err = z.trailer()
		}
		if err != nil {
			z.setErr(err)
		}
		z.noteProgress()
		if len(z.uses) > 0 {
			z.retireUses(z.err != nil)
		}
	}
}

// setErr records why the decoder stopped.
func (z *Reader) setErr(err error) {
	if errors.Is(err, errInputEnd) {
		if z.span {
			err = io.EOF
		} else {
			err = io.ErrUnexpectedEOF
		}
	}
	z.err = err
}

// slide moves the last windowSize bytes of the current member's output to
// the front of hist. All of hist has been read.
func (z *Reader) slide() {
	z.updateCRC()
	keep := min(windowSize, z.wr-z.lo)
	drop := z.wr - keep
	copy(z.hist, z.hist[drop:z.wr])
	z.base += int64(drop)
	z.wr, z.rd, z.crcAt, z.lo = keep, keep, keep, 0
}

// updateCRC brings the member's CRC-32 up to the decoded output.
func (z *Reader) updateCRC() {
	z.crc = crc32.Update(z.crc, crc32.IEEETable, z.hist[z.crcAt:z.wr])
	z.crcAt = z.wr
}

// checkpoint reports a checkpoint at the current position if one is due.
// At a member start, in is the offset of the member's header.
func (z *Reader) checkpoint(atMember bool, in int64) error {
	if z.onCheckpoint == nil || z.lastCP >= 0 && z.every > 0 && z.out()-z.lastCP < z.every {
		if z.keepReach > 0 {
			z.keepBoundary(atMember, in)
		}
		return nil
	}
	cp := z.here(atMember, in)
	if !atMember {
		cp.Window = z.cloneWindow()
		if len(cp.Window) > 0 && len(z.uses) < maxUses {
			z.uses = append(z.uses, newWindowUse(cp.Window, cp.Out))
		}
	}
	z.lastCP = cp.Out
	if err := z.onCheckpoint(cp); err != nil {
		return fmt.Errorf("inflate: checkpoint at output offset %d: %w", cp.Out, err)
	}
	return nil
}

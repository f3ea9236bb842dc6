package inflate

import (
	"errors"
	"math/bits"
	"sync"
)

// Huffman codes are decoded by table lookup. The low rootBits bits of the
// bit buffer (DEFLATE packs codes starting from their most significant bit,
// so a table is indexed by the bit-reversed code) select an entry of the
// first-level table. A code no longer than rootBits has an entry in every
// slot its low bits select; a longer one is found through a pointer entry
// to a second-level table indexed by the next bits, sized for the longest
// code that shares the pointer's prefix.
//
// An entry is a uint32:
//
//	bits 0-3   code bits to consume (rootBits for a pointer)
//	bits 4-7   extra bits that follow the code (lengths, distances), or the
//	           size in bits of the second-level table (a pointer)
//	bits 8-11  kind: entLiteral, entEOB, entSub, entBad; none for a length
//	           or a distance
//	bits 16-31 literal byte, length or distance base, symbol, or offset of
//	           the second-level table
const (
	entBitsMask  = 0xf
	entExtraShft = 4
	entLiteral   = 1 << 8
	entEOB       = 1 << 9
	entSub       = 1 << 10
	entBad       = 1 << 11
	entValShift  = 16
)

const (
	maxCodeBits = 15  // longest code RFC 1951 allows
	maxMatch    = 258 // longest back-reference
	maxDist     = 32768
	numLitLen   = 286 // literal/length symbols a dynamic block may code
	numDist     = 30  // distance symbols a dynamic block may code
	numCodeLen  = 19  // code length symbols

	litRoot      = 10
	litTableSize = 2048 // root 1024 + second level; zlib's bound for 286 codes at root 10 is 1332
	litMask      = 1<<litRoot - 1

	distRoot      = 8
	distTableSize = 1024 // root 256 + second level, ample for 30 codes
	distMask      = 1<<distRoot - 1

	clenRoot      = 7 // code length codes are at most 7 bits: no second level
	clenTableSize = 1 << clenRoot
)

type (
	litTable  [litTableSize]uint32
	distTable [distTableSize]uint32
	clenTable [clenTableSize]uint32
)

// The entries (without code bits) of each symbol of each alphabet.
var (
	litSymbols  [288]uint32
	distSymbols [32]uint32
	clenSymbols [numCodeLen]uint32
)

// The tables of fixed-Huffman blocks (RFC 1951, 3.2.6), built once.
var (
	fixedOnce sync.Once
	fixedLit  litTable
	fixedDist distTable
)

func init() {
	lengthBase := [29]uint32{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra := [29]uint32{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase := [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
		257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	for sym := range litSymbols {
		switch {
		case sym < 256:
			litSymbols[sym] = entLiteral | uint32(sym)<<entValShift
		case sym == 256:
			litSymbols[sym] = entEOB
		case sym < numLitLen:
			i := sym - 257
			litSymbols[sym] = lengthBase[i]<<entValShift | lengthExtra[i]<<entExtraShft
		default: // 286 and 287 have fixed codes but no meaning
			litSymbols[sym] = entBad | uint32(sym)<<entValShift
		}
	}
	for sym := range distSymbols {
		if sym < numDist {
			extra := uint32(0)
			if sym >= 4 {
				extra = uint32(sym/2 - 1)
			}
			distSymbols[sym] = distBase[sym]<<entValShift | extra<<entExtraShft
		} else { // 30 and 31 have fixed codes but no meaning
			distSymbols[sym] = entBad | uint32(sym)<<entValShift
		}
	}
	for sym := range clenSymbols {
		clenSymbols[sym] = uint32(sym) << entValShift
	}
}

// fixedTables returns the tables of fixed-Huffman blocks.
func fixedTables() (*litTable, *distTable) {
	fixedOnce.Do(func() {
		var lengths [288 + 32]uint8
		for i := range 288 {
			switch {
			case i < 144:
				lengths[i] = 8
			case i < 256:
				lengths[i] = 9
			case i < 280:
				lengths[i] = 7
			default:
				lengths[i] = 8
			}
		}
		for i := range 32 {
			lengths[288+i] = 5
		}
		if buildTable(fixedLit[:], litRoot, lengths[:288], litSymbols[:]) != nil ||
			buildTable(fixedDist[:], distRoot, lengths[288:], distSymbols[:]) != nil {
			panic("inflate: fixed Huffman tables do not build")
		}
	})
	return &fixedLit, &fixedDist
}

var (
	errOversubscribed = errors.New("over-subscribed code lengths")
	errIncomplete     = errors.New("incomplete code lengths")
	errTableSize      = errors.New("code too large for its table")
)

// buildTable fills table, whose first level has root bits, with the
// canonical Huffman code of the given code lengths (0: symbol unused);
// symbols[sym] is the entry of each symbol, less its code bits.
//
// The code must be complete, as compress/flate and zlib require, with two
// exceptions both accept: no code at all, and a single code of one bit.
// Slots no code reaches are entBad, with the bits that show it (1 in the
// one-code case, 0 when there is no code).
func buildTable(table []uint32, root uint, lengths []uint8, symbols []uint32) error {
	var count [maxCodeBits + 1]int
	maxLen := 0
	for _, n := range lengths {
		count[n]++
		maxLen = max(maxLen, int(n))
	}
	count[0] = 0
	left := 1 // codes of the current length not yet assigned
	for n := 1; n <= maxCodeBits; n++ {
		left = left<<1 - count[n]
		if left < 0 {
			return errOversubscribed
		}
	}
	if left > 0 {
		single := maxLen == 1 && count[1] == 1
		if maxLen != 0 && !single {
			return errIncomplete
		}
		bad := uint32(entBad)
		if single {
			bad |= 1
		}
		for i := range 1 << root {
			table[i] = bad
		}
		if maxLen == 0 {
			return nil
		}
	}

	// Symbols sorted by code length, then by symbol (canonical order), and
	// their codes, most significant bit first.
	var offset [maxCodeBits + 2]int
	for n := 1; n <= maxCodeBits; n++ {
		offset[n+1] = offset[n] + count[n]
	}
	var sorted, codes [288]uint16
	for sym, n := range lengths {
		if n != 0 {
			sorted[offset[n]] = uint16(sym)
			offset[n]++
		}
	}
	nsym := offset[maxCodeBits]
	code, codeLen := 0, 0
	for i, sym := range sorted[:nsym] {
		n := int(lengths[sym])
		code <<= n - codeLen // the first code of a longer length
		codeLen = n
		codes[i] = uint16(code)
		code++
	}
	// highBits is the first root bits of the i-th code: codes that share
	// them share a second-level table, and are contiguous in canonical order.
	highBits := func(i int) int { return int(codes[i]) >> (int(lengths[sorted[i]]) - int(root)) }

	next := 1 << root // where the next second-level table starts
	prefix, subBits, subAt := -1, uint(0), 0
	for i, sym := range sorted[:nsym] {
		n := int(lengths[sym])
		rev := int(bits.Reverse16(codes[i]) >> (16 - n))
		entry := symbols[sym]
		if n <= int(root) {
			entry |= uint32(n)
			for j := rev; j < 1<<root; j += 1 << n {
				table[j] = entry
			}
			continue
		}
		if p := highBits(i); p != prefix {
			// A new prefix: its table is sized for the longest code that
			// shares it, the last one in canonical order.
			prefix = p
			last := i
			for last+1 < nsym && highBits(last+1) == p {
				last++
			}
			subBits = uint(lengths[sorted[last]]) - root
			subAt = next
			next += 1 << subBits
			if next > len(table) {
				return errTableSize
			}
			slot := rev & (1<<root - 1)
			table[slot] = entSub | uint32(subAt)<<entValShift | uint32(subBits)<<entExtraShft | uint32(root)
		}
		entry |= uint32(n - int(root))
		for j := rev >> root; j < 1<<subBits; j += 1 << (n - int(root)) {
			table[subAt+j] = entry
		}
	}
	return nil
}

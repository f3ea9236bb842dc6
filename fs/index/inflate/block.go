package inflate

// blockHeader reads a DEFLATE block header (RFC 1951, 3.2.3), after
// reporting a checkpoint if one is due: the decoder is at a block
// boundary.
func (z *Reader) blockHeader() error {
	if z.skip > 0 {
		if _, err := z.in.take(z.skip); err != nil {
			return err
		}
		z.skip = 0
	}
	if err := z.checkpoint(false, 0); err != nil {
		return err
	}
	at := z.in.bitPos()
	hdr, err := z.in.take(3)
	if err != nil {
		return err
	}
	z.final = hdr&1 != 0
	switch hdr >> 1 {
	case 0:
		return z.storedHeader()
	case 1:
		z.lit, z.dist = fixedTables()
	case 2:
		if err := z.dynamicTables(); err != nil {
			return err
		}
		z.lit, z.dist = &z.dynLit, &z.dynDist
	default:
		return corrupt(at, "reserved block type 3")
	}
	z.state = stHuffman
	return nil
}

// blockDone moves on from a block that ended.
func (z *Reader) blockDone() {
	if z.final {
		z.state = stTrailer
	} else {
		z.state = stBlock
	}
}

// storedHeader reads the lengths of a stored block (RFC 1951, 3.2.4).
func (z *Reader) storedHeader() error {
	z.in.alignByte()
	n, err := z.in.take(16)
	if err != nil {
		return err
	}
	check, err := z.in.take(16)
	if err != nil {
		return err
	}
	if uint16(n) != ^uint16(check) {
		return corrupt(z.in.bitPos()-32, "stored block length %04x and its complement %04x do not match", n, check)
	}
	z.stored = int(n)
	z.state = stStored
	if n == 0 {
		z.blockDone()
	}
	return nil
}

// storedData copies a stored block's bytes to the output, as far as there
// is room.
func (z *Reader) storedData() error {
	in := &z.in
	for z.stored > 0 && z.wr < len(z.hist) {
		if in.nb >= 8 { // whole bytes left in the bit buffer by a block header
			z.hist[z.wr] = byte(in.bits)
			in.bits >>= 8
			in.nb -= 8
			z.wr++
			z.stored--
			continue
		}
		in.dropBits()
		if in.pos == in.end && !in.refill(1) {
			return in.inputErr()
		}
		n := copy(z.hist[z.wr:min(len(z.hist), z.wr+z.stored)], in.buf[in.pos:in.end])
		in.pos += n
		z.wr += n
		z.stored -= n
	}
	if z.stored == 0 {
		z.blockDone()
	}
	return nil
}

// codeLengthOrder is the order of the code length code's lengths in a
// dynamic block header.
var codeLengthOrder = [numCodeLen]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

// dynamicTables reads the codes of a dynamic-Huffman block (RFC 1951,
// 3.2.7) into z.dynLit and z.dynDist, refusing what compress/flate refuses.
func (z *Reader) dynamicTables() error {
	in := &z.in
	at := in.bitPos()
	counts, err := in.take(14)
	if err != nil {
		return err
	}
	nlit := int(counts&0x1f) + 257
	ndist := int(counts>>5&0x1f) + 1
	nclen := int(counts>>10) + 4
	if nlit > numLitLen || ndist > numDist {
		return corrupt(at, "%d literal/length codes and %d distance codes, at most %d and %d", nlit, ndist, numLitLen, numDist)
	}
	var clens [numCodeLen]uint8
	for _, sym := range codeLengthOrder[:nclen] {
		n, err := in.take(3)
		if err != nil {
			return err
		}
		clens[sym] = uint8(n)
	}
	var clen clenTable
	if err := buildTable(clen[:], clenRoot, clens[:], clenSymbols[:]); err != nil {
		return corrupt(at, "code length code: %v", err)
	}

	var lengths [numLitLen + numDist]uint8
	for i, n := 0, nlit+ndist; i < n; {
		at := in.bitPos()
		e, err := in.sym(clen[:], clenRoot)
		if err != nil {
			return err
		}
		if e&entBad != 0 {
			return corrupt(at, "invalid code length code")
		}
		sym := e >> entValShift
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var rep uint32
		val := uint8(0)
		switch sym {
		case 16:
			if i == 0 {
				return corrupt(at, "code length repeated before any")
			}
			val = lengths[i-1]
			rep, err = in.take(2)
			rep += 3
		case 17:
			rep, err = in.take(3)
			rep += 3
		default:
			rep, err = in.take(7)
			rep += 11
		}
		if err != nil {
			return err
		}
		if i+int(rep) > n {
			return corrupt(at, "code lengths repeated past the %d the header announces", n)
		}
		for range rep {
			lengths[i] = val
			i++
		}
	}
	if lengths[256] == 0 {
		return corrupt(at, "no code for end of block")
	}
	if err := buildTable(z.dynLit[:], litRoot, lengths[:nlit], litSymbols[:]); err != nil {
		return corrupt(at, "literal/length code: %v", err)
	}
	if err := buildTable(z.dynDist[:], distRoot, lengths[nlit:nlit+ndist], distSymbols[:]); err != nil {
		return corrupt(at, "distance code: %v", err)
	}
	return nil
}

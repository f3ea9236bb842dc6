package inflate

import "encoding/binary"

// huffman decodes the symbols of a Huffman-coded block until the block
// ends or a batch of output is done. Most of the input goes through
// huffmanFast; only the last bytes of the whole input, too few for it,
// go through huffmanSlow one symbol at a time.
func (z *Reader) huffman() error {
	for z.state == stHuffman && z.wr < histLimit {
		if len(z.uses) > 0 && z.out()-z.uses[0].end >= windowSize {
			z.retireUses(false)
		}
		var err error
		switch {
		case z.in.refill(8):
			err = z.huffmanFast()
		default:
			err = z.huffmanSlow()
		}
		z.noteProgress()
		if err != nil {
			return err
		}
	}
	return nil
}

// huffmanFast decodes symbols while at least eight bytes of input are
// buffered and a longest back-reference fits in hist. Each symbol starts
// with a refill of the bit buffer to at least 56 bits, which is enough
// for a length code, its extra bits, a distance code and its extra bits
// (15+5+15+13 bits), so no symbol checks for bits.
//
// While checkpoints' windows are watched (windowuse.go), a reference that
// reaches back before the last watched checkpoint is noted, and decoding
// stops where the first watched window retires.
func (z *Reader) huffmanFast() error {
	buf := z.in.buf[:z.in.end]
	pos, bits, nb := z.in.pos, z.in.bits, z.in.nb
	hist := z.hist
	w, lo := z.wr, z.lo
	lit, dist := z.lit, z.dist
	end := z.batchEnd()
	watch := -1 // a reference to before hist[watch] may reach a watched window
	if n := len(z.uses); n > 0 {
		watch = int(z.uses[n-1].end - z.base)
		end = min(end, int(z.uses[0].end+windowSize-z.base))
	}
	var bad string
	for pos <= len(buf)-8 && w < end {
		bits |= binary.LittleEndian.Uint64(buf[pos:]) << (nb & 63)
		pos += int(63-nb) >> 3
		nb |= 56

		e := lit[bits&litMask]
		if e&entSub != 0 {
			bits >>= litRoot
			nb -= litRoot
			e = lit[(e>>entValShift+uint32(bits)&(1<<(e>>entExtraShft&0xf)-1))&(litTableSize-1)]
		}
		n := e & entBitsMask
		bits >>= n
		nb -= uint(n)
		if e&entLiteral != 0 {
			hist[w] = byte(e >> entValShift)
			w++
			continue
		}
		if e&entEOB != 0 {
			z.blockDone()
			break
		}
		if e&entBad != 0 {
			bad = "invalid literal/length code"
			break
		}
		extra := e >> entExtraShft & 0xf
		length := int(e>>entValShift) + int(bits&(1<<extra-1))
		bits >>= extra
		nb -= uint(extra)

		d := dist[bits&distMask]
		if d&entSub != 0 {
			bits >>= distRoot
			nb -= distRoot
			d = dist[(d>>entValShift+uint32(bits)&(1<<(d>>entExtraShft&0xf)-1))&(distTableSize-1)]
		}
		if d&entBad != 0 {
			bad = "invalid distance code"
			break
		}
		n = d & entBitsMask
		bits >>= n
		nb -= uint(n)
		extra = d >> entExtraShft & 0xf
		distance := int(d>>entValShift) + int(bits&(1<<extra-1))
		bits >>= extra
		nb -= uint(extra)
		if distance > w-lo {
			bad = "distance too far back"
			break
		}
		if w-distance < watch {
			z.wr = w
			z.markUses(distance, length)
		}
		w = copyMatch(hist, w, distance, length)
	}
	z.in.pos, z.in.bits, z.in.nb = pos, bits, nb
	z.wr = w
	if bad != "" {
		return corrupt(z.in.bitPos(), "%s", bad)
	}
	return nil
}

// copyMatch copies length bytes from distance back to hist[w:] and returns
// the new end of output. It may write up to copySlack bytes past the end.
func copyMatch(hist []byte, w, distance, length int) int {
	src := w - distance
	end := w + length
	switch {
	case distance >= 8 && length <= 64:
		// Eight bytes at a time: each word read was written before (the
		// source is at least a word behind), and the last may spill.
		for w < end {
			binary.LittleEndian.PutUint64(hist[w:], binary.LittleEndian.Uint64(hist[src:]))
			w += 8
			src += 8
		}
	case distance >= length:
		copy(hist[w:end], hist[src:src+length])
	default:
		// The source overlaps what is being written: the pattern repeats,
		// and each copy doubles the part already written.
		for w < end {
			w += copy(hist[w:end], hist[src:w])
		}
	}
	return end
}

// huffmanSlow decodes one symbol from the last bytes of the input,
// checking for every bit it takes.
func (z *Reader) huffmanSlow() error {
	in := &z.in
	at := in.bitPos()
	e, err := in.sym(z.lit[:], litRoot)
	if err != nil {
		return err
	}
	switch {
	case e&entLiteral != 0:
		z.hist[z.wr] = byte(e >> entValShift)
		z.wr++
		return nil
	case e&entEOB != 0:
		z.blockDone()
		return nil
	case e&entBad != 0:
		return corrupt(at, "invalid literal/length code")
	}
	extra, err := in.take(uint(e>>entExtraShft) & 0xf)
	if err != nil {
		return err
	}
	length := int(e>>entValShift) + int(extra)
	d, err := in.sym(z.dist[:], distRoot)
	if err != nil {
		return err
	}
	if d&entBad != 0 {
		return corrupt(at, "invalid distance code")
	}
	extra, err = in.take(uint(d>>entExtraShft) & 0xf)
	if err != nil {
		return err
	}
	distance := int(d>>entValShift) + int(extra)
	if distance > z.wr-z.lo {
		return corrupt(at, "distance too far back")
	}
	if len(z.uses) > 0 {
		z.markUses(distance, length)
	}
	z.wr = copyMatch(z.hist, z.wr, distance, length)
	return nil
}

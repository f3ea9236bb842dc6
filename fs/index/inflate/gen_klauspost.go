//go:build ignore

// gen_klauspost writes testdata/klauspost-*.gz: one input, gzipped by
// github.com/klauspost/compress at each of its levels, whose encoders
// choose blocks differently from compress/gzip's. The tests compare the
// decoder's output on them with compress/gzip's, so the package and its
// tests import only the standard library.
//
// Run it from this directory: go run gen_klauspost.go
package main

import (
	"bytes"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/klauspost/compress/gzip"
)

func main() {
	input := makeInput()
	levels := map[string]int{
		"stateless": gzip.StatelessCompression,
		"huffman":   gzip.HuffmanOnly,
		"store":     gzip.NoCompression,
	}
	for l := gzip.BestSpeed; l <= gzip.BestCompression; l++ {
		levels[fmt.Sprint(l)] = l
	}
	for name, level := range levels {
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, level)
		if err != nil {
			log.Fatal(err)
		}
		// Written in pieces, with a flush, as a streaming writer would.
		for i := 0; i < len(input); i += 20000 {
			if _, err := zw.Write(input[i:min(i+20000, len(input))]); err != nil {
				log.Fatal(err)
			}
			if i == 40000 && level != gzip.StatelessCompression {
				if err := zw.Flush(); err != nil {
					log.Fatal(err)
				}
			}
		}
		if err := zw.Close(); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile("testdata/klauspost-"+name+".gz", buf.Bytes(), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// makeInput is 64 KiB of text-like words, runs, and random bytes.
func makeInput() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("layer image blob digest manifest index tar gzip zstd chunk span window block")
	var b bytes.Buffer
	for b.Len() < 64<<10 {
		switch r.IntN(60) {
		case 0:
			b.Write(bytes.Repeat([]byte{byte(r.IntN(256))}, r.IntN(300)))
		case 1:
			for range r.IntN(100) {
				b.WriteByte(byte(r.IntN(256)))
			}
		default:
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(" \n\t,"[r.IntN(4)])
		}
	}
	return b.Bytes()
}

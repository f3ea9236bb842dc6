package inflate

import (
	"compress/gzip"
	"testing"
)

// TestLevels decodes what compress/gzip writes at every level, text and
// random data, with stored, fixed and dynamic Huffman blocks.
func TestLevels(t *testing.T) {
	inputs := map[string][]byte{
		"text":   textBytes(1<<20, 1),
		"random": randomBytes(200<<10, 2),
		"short":  []byte("hello, hello, hello"),
		"empty":  nil,
	}
	for name, data := range inputs {
		for level := gzip.HuffmanOnly; level <= gzip.BestCompression; level++ {
			checkSame(t, gzipLevel(t, data, level), 64<<10)
			_ = name
		}
	}
}

// Package inflate is a gzip (RFC 1952) and DEFLATE (RFC 1951) decoder that
// can stop and resume at DEFLATE block boundaries, so that a plain gzip
// layer can be read lazily through a seekable index, as zlib's zran.c,
// SOCI's zTOC and nydus' zran do.
//
// One streaming pass over a layer (NewReader) decodes it like compress/gzip
// in its default multistream mode, checks every member's CRC-32 and ISIZE,
// and reports a Checkpoint about every so many bytes of output: where in
// the compressed stream the next block starts (a byte offset and a bit
// offset within that byte), the uncompressed offset, and the last 32 KiB of
// output, which the next block's back-references may reach. Later, Resume
// decodes from any checkpoint given only the compressed bytes from the
// checkpoint's byte offset on, and stops cleanly where the bytes it was
// given end, so a span between two checkpoints can be fetched by one range
// request and decoded on its own. A Checkpoint has a compact binary
// encoding (AppendBinary, UnmarshalBinary) that stores the window
// compressed and refuses hostile input.
//
// A checkpoint is only ever at a block boundary or at the start of a gzip
// member, because those are the only places where the decoder's state is
// just a bit position and a window. An encoder that writes one huge block
// leaves no boundary inside it, and then spans are as long as its blocks.
//
// The decoder is written for this purpose (compress/flate can neither start
// at a bit offset nor report block boundaries). It decodes Huffman codes
// with a 10-bit first-level lookup table and a 64-bit bit buffer, buffers
// its own input, and keeps its output in one linear buffer so that
// back-references are plain copies.
//
// This package is a leaf: it imports only the standard library. Its tests
// compare it with compress/gzip; output of other encoders (klauspost/compress,
// made by gen_klauspost.go, and the gzip command when it is installed) is
// read from testdata or made at test time, so the tests import only the
// standard library too.
package inflate

package queue

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
)

// Record kinds of a segment (see the package doc).
const (
	recBody   byte = 'B' // queue id (17 bytes), then the message body
	recCommit byte = 'C' // offset of the entry's body record in this segment (8 bytes; -1: body in big/), then metadata
	recUpdate byte = 'U' // metadata after an attempt
	recRemove byte = 'R' // queue id: the entry is gone
)

// recHeader is the frame of every record: payload length (4 bytes), CRC32C of kind and payload (4),
// kind (1). A length of zero ends the segment's records: a segment is zero-filled when it is made.
const recHeader = 9

// maxRecord bounds a record's payload, so a corrupt length cannot make recovery allocate gigabytes.
const maxRecord = 1 << 30

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// recordCRC is the checksum a record's header carries.
func recordCRC(kind byte, payload []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, []byte{kind}), castagnoli, payload)
}

// putHeader fills the header of a record whose payload follows it in b.
func putHeader(b []byte, kind byte) {
	payload := b[recHeader:]
	binary.LittleEndian.PutUint32(b[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[4:8], recordCRC(kind, payload))
	b[8] = kind
}

// appendRecord appends one framed record to b.
func appendRecord(b []byte, kind byte, parts ...[]byte) []byte {
	start := len(b)
	b = append(b, make([]byte, recHeader)...)
	for _, p := range parts {
		b = append(b, p...)
	}
	putHeader(b[start:], kind)
	return b
}

// errTorn ends a scan at the first record that is not whole: a torn tail after a crash, a corrupt
// byte, or the zero-filled space after the last record.
var errTorn = errors.New("torn or unwritten record")

// readRecord reads the record at off in r (a segment of size bytes) into buf (grown as needed) and
// returns its kind, its payload (aliasing buf) and the offset of the next record. Any record that is
// not whole — a length past the end, a CRC mismatch, an unknown kind — is errTorn. It is the only
// parser of segment framing and must never panic on any input.
func readRecord(r io.ReaderAt, size, off int64, buf []byte) (kind byte, payload, grown []byte, next int64, err error) {
	if off < 0 || size-off < recHeader {
		return 0, nil, buf, off, errTorn
	}
	var h [recHeader]byte
	if _, err := r.ReadAt(h[:], off); err != nil {
		return 0, nil, buf, off, err
	}
	n := int64(binary.LittleEndian.Uint32(h[0:4]))
	sum := binary.LittleEndian.Uint32(h[4:8])
	kind = h[8]
	if n == 0 || n > maxRecord || n > size-off-recHeader {
		return 0, nil, buf, off, errTorn
	}
	switch kind {
	case recBody, recCommit, recUpdate, recRemove:
	default:
		return 0, nil, buf, off, errTorn
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	payload = buf[:n]
	if _, err := r.ReadAt(payload, off+recHeader); err != nil {
		return 0, nil, buf, off, err
	}
	if recordCRC(kind, payload) != sum {
		return 0, nil, buf, off, errTorn
	}
	return kind, payload, buf, off + recHeader + n, nil
}

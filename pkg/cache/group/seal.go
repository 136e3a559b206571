package group

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
)

// A dataset's requests and blocks travel sealed (AES-256-GCM) with keys
// derived from its group key: the URL names the dataset by a public ID, the
// file's name and version ride sealed in the query, and the block comes
// back sealed. A member without the dataset's credentials, which cannot
// compute the key, learns no name from a request it is sent and cannot
// read a block it is answered: replaying a request it saw gets it only
// sealed bytes. The seal also checks the block end to end.

// errSeal: a request or a block that does not open with the dataset's key.
var errSeal = errors.New("cache group: sealed with another key, or corrupt")

// sealer seals one dataset's requests and blocks.
type sealer struct {
	id        string // public: names the dataset in requests
	req, resp cipher.AEAD
}

// DatasetID is the public name of the dataset of group key key.
func DatasetID(key string) string {
	h := sha256.Sum256([]byte("cistern-group-id\x00" + key))
	return hex.EncodeToString(h[:16])
}

func newSealer(key string) (*sealer, error) {
	aead := func(purpose string) (cipher.AEAD, error) {
		k := sha256.Sum256([]byte("cistern-group-" + purpose + "\x00" + key))
		b, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	s := &sealer{id: DatasetID(key)}
	var err error
	if s.req, err = aead("request"); err != nil {
		return nil, err
	}
	if s.resp, err = aead("block"); err != nil {
		return nil, err
	}
	return s, nil
}

// ad is what a seal is bound to besides its bytes: the dataset and block.
func (s *sealer) ad(index int64, more string) []byte {
	b := binary.BigEndian.AppendUint64([]byte(s.id+"\x00"), uint64(index))
	return append(b, more...)
}

// sealRequest returns the query value naming file name at version object.
func (s *sealer) sealRequest(name, object string, index int64) string {
	nonce := make([]byte, s.req.NonceSize())
	_, _ = rand.Read(nonce)
	sealed := s.req.Seal(nonce, nonce, []byte(name+"\x00"+object), s.ad(index, ""))
	return base64.RawURLEncoding.EncodeToString(sealed)
}

// openRequest returns the name and version a query value names.
func (s *sealer) openRequest(q string, index int64) (name, object string, err error) {
	b, err := base64.RawURLEncoding.DecodeString(q)
	if err != nil || len(b) < s.req.NonceSize() {
		return "", "", errSeal
	}
	plain, err := s.req.Open(nil, b[:s.req.NonceSize()], b[s.req.NonceSize():], s.ad(index, ""))
	if err != nil {
		return "", "", errSeal
	}
	name, object, ok := strings.Cut(string(plain), "\x00")
	if !ok {
		return "", "", errSeal
	}
	return name, object, nil
}

// sealBlock seals block index of version object.
func (s *sealer) sealBlock(b []byte, object string, index int64) []byte {
	nonce := make([]byte, s.resp.NonceSize(), s.resp.NonceSize()+len(b)+s.resp.Overhead())
	_, _ = rand.Read(nonce)
	return s.resp.Seal(nonce, nonce, b, s.ad(index, object))
}

// sealedLen is the length of a sealed block of n bytes.
func (s *sealer) sealedLen(n int) int { return s.resp.NonceSize() + n + s.resp.Overhead() }

// openBlock opens a sealed block index of version object.
func (s *sealer) openBlock(sealed []byte, object string, index int64) ([]byte, error) {
	ns := s.resp.NonceSize()
	if len(sealed) < ns+s.resp.Overhead() {
		return nil, errSeal
	}
	// Into a buffer of its own: a failed open clears its output, which
	// in place would be the sealed bytes.
	b, err := s.resp.Open(make([]byte, 0, len(sealed)-ns-s.resp.Overhead()), sealed[:ns], sealed[ns:], s.ad(index, object))
	if err != nil {
		return nil, errSeal
	}
	return b, nil
}

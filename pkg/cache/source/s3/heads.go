package s3

import (
	"sync"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// head is the beginning of a file, fetched by its lookup, kept until its
// first read (or headTTL).
type head struct {
	fingerprint string
	size        int64
	data        []byte
	at          time.Time
}

// A lookup fetches the first headBytes of a file; heads are kept headTTL
// and headMax bytes in all.
const (
	headBytes = 256 << 10
	// headSlots bounds the lookups that read first bytes at once
	// (headSlots x headBytes of buffers per source).
	headSlots = 32
	headTTL   = 30 * time.Second
	headMax   = 64 << 20
)

// keepHead remembers the first bytes of name.
func (s *Source) keepHead(name string, a source.Attr, data []byte) {
	if len(data) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headBytes+int64(len(data)) > headMax {
		now := time.Now()
		for k, h := range s.heads {
			if now.Sub(h.at) > headTTL || s.headBytes+int64(len(data)) > headMax {
				delete(s.heads, k)
				s.headBytes -= int64(len(h.data))
			}
		}
	}
	if old := s.heads[name]; old != nil {
		s.headBytes -= int64(len(old.data))
	}
	s.heads[name] = &head{fingerprint: a.Fingerprint(), size: a.Size, data: data, at: time.Now()}
	s.headBytes += int64(len(data))
}

// takeHead serves p at off from the head of name if the head is of the
// same version and covers the read (to the end of the file).
func (s *Source) takeHead(name, fingerprint string, p []byte, off int64) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.heads[name]
	if h == nil || h.fingerprint != fingerprint || time.Since(h.at) > headTTL {
		return 0, false
	}
	end := off + int64(len(p))
	if end > int64(len(h.data)) && int64(len(h.data)) < h.size {
		return 0, false // the read goes past what the lookup brought
	}
	end = min(end, int64(len(h.data)))
	if off >= end {
		return 0, false
	}
	n := copy(p, h.data[off:end])
	if end == int64(len(h.data)) {
		delete(s.heads, name) // read to its end: the cache has it now
		s.headBytes -= int64(len(h.data))
	}
	return n, true
}

type dirListing struct {
	at      time.Time
	entries map[string]source.Attr // may be the first lookupListing entries only
	list    []source.Entry         // the whole directory in order; nil if entries is a part
}

// headBufs are the lookups' buffers, reused.
var headBufs = sync.Pool{New: func() any {
	b := make([]byte, headBytes)
	return &b
}}

package group

import "testing"

// NewTestPKI returns a CA and a member certificate and key of it, PEM, for
// the external tests.
func NewTestPKI(t *testing.T) (ca, cert, key []byte) {
	p := newPKI(t, "group")
	return p.ca, p.cert, p.key
}

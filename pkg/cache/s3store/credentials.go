package s3store

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// Keys of a CSI secret that carries S3 credentials. They come only from CSI
// secrets (provisioner, node-stage or node-publish) and travel to the cache
// daemon over its control socket: never argv, environment, logs, volume IDs
// or /proc/mounts.
const (
	SecretAccessKey    = "access-key"
	SecretSecretKey    = "secret-key"
	SecretSessionToken = "session-token" // optional: temporary credentials
	SecretCABundle     = "ca-bundle"     // optional: PEM certificates the endpoint is signed by
)

// Credentials sign requests to a store. The zero value is anonymous.
type Credentials struct {
	AccessKey    string
	SecretKey    string
	SessionToken string
	// CABundle is PEM; empty = the system's roots.
	CABundle string
}

// Empty reports whether no key is set.
func (c Credentials) Empty() bool { return c.AccessKey == "" && c.SecretKey == "" }

// Secrets returns the values that must never be shown, for redaction.
func (c Credentials) Secrets() []string {
	var out []string
	for _, s := range []string{c.AccessKey, c.SecretKey, c.SessionToken} {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Identity is a short hash of the credentials: two identities are equal
// only when every field is. It names a credential in logs and keys without
// revealing it.
func (c Credentials) Identity() string {
	h := sha256.New()
	fmt.Fprintf(h, "cistern-s3-identity\x00%s\x00%s\x00%s\x00%s", c.AccessKey, c.SecretKey, c.SessionToken, c.CABundle)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// CredentialsFromSecrets reads credentials from a CSI secret. Unknown keys
// are refused by name (never by value); access-key and secret-key come as a
// pair. An empty map is anonymous.
func CredentialsFromSecrets(m map[string]string) (Credentials, error) {
	var unknown []string
	for k := range m {
		switch k {
		case SecretAccessKey, SecretSecretKey, SecretSessionToken, SecretCABundle:
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Credentials{}, fmt.Errorf("secret key %q is not an S3 credential (known: %s, %s, %s, %s)", unknown[0], SecretAccessKey, SecretSecretKey, SecretSessionToken, SecretCABundle)
	}
	c := Credentials{
		AccessKey:    strings.TrimSpace(m[SecretAccessKey]),
		SecretKey:    strings.TrimSpace(m[SecretSecretKey]),
		SessionToken: strings.TrimSpace(m[SecretSessionToken]),
		CABundle:     m[SecretCABundle],
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return Credentials{}, fmt.Errorf("secret must hold both %s and %s, or neither", SecretAccessKey, SecretSecretKey)
	}
	if c.SessionToken != "" && c.AccessKey == "" {
		return Credentials{}, fmt.Errorf("secret has %s without %s and %s", SecretSessionToken, SecretAccessKey, SecretSecretKey)
	}
	if c.CABundle != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(c.CABundle)) {
		return Credentials{}, fmt.Errorf("secret key %s holds no PEM certificate", SecretCABundle)
	}
	return c, nil
}

// NewFromSecrets returns a client of loc with the credentials of a CSI
// secret: how the daemon and the controller both build one.
func NewFromSecrets(loc Location, secrets map[string]string, cfg Config) (*Client, error) {
	creds, err := CredentialsFromSecrets(secrets)
	if err != nil {
		return nil, err
	}
	return New(loc, creds, cfg)
}

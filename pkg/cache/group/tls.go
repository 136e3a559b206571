package group

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
)

// ServerName is the name every member's certificate carries (peers are
// reached by address; they are verified as members of the group).
const ServerName = "cistern-cache-group"

// TLSConfigs returns the server and client TLS configurations of a member
// from its certificate and key (for ServerName, signed by the group's CA)
// and the CA: each side requires the other's certificate, so a process
// without one gets no data.
func TLSConfigs(certPEM, keyPEM, caPEM []byte) (server, client *tls.Config, err error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, errors.New("cache group: no CA certificate in the CA bundle")
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   ServerName,
	}
	return server, client, nil
}

// DatasetKey is a dataset's key in the group: the same on every member
// that holds the dataset (source) with the same credentials (secret: the
// secret key, empty for a dataset without credentials), and not
// computable without them. It never travels: requests name the dataset by
// DatasetID and are sealed with keys derived from it, and so are the
// blocks answered (seal.go). (A dataset without credentials, a POSIX
// share, has a key any member can compute from its source.)
func DatasetKey(source string, secret []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("cistern-group-dataset\x00"))
	mac.Write([]byte(source))
	return hex.EncodeToString(mac.Sum(nil)[:16])
}

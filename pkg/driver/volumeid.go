package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// VolumeID is what a volume ID carries: everything DeleteVolume and the node
// need to find the volume's data, and nothing secret.
//
// Format (version 1), seven '#'-separated fields:
//
//	cistern1#<dataset>#<ro|rw>#<onDelete>#<nameHash>#<source>#<subPath>
//
//	dataset   the dataset name (a DNS label)
//	ro|rw     the dataset's access
//	onDelete  retain, delete or archive
//	nameHash  the first 16 hex digits of sha256(CreateVolume name): the key of
//	          the volume's record, so the ID stays short whatever the name
//	source    the source URL without credentials, path-escaped
//	subPath   the resolved sub-path, path-escaped ("" = the dataset root)
//
// Path-escaping turns '#' and '%' into %XX, so no field can contain the
// separator. Decoding applies every rule CreateVolume applied: a forged ID
// can name no path outside its dataset.
type VolumeID struct {
	Dataset  string
	ReadOnly bool
	OnDelete OnDelete
	NameHash string
	Source   api.Source
	SubPath  string
}

const volumeIDPrefix = "cistern1"

// ErrBadVolumeID is wrapped by every volume-ID decoding error.
var ErrBadVolumeID = errors.New("not a Cistern volume ID")

// NameHash returns the record key of a CreateVolume name.
func NameHash(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:8])
}

// String encodes the ID.
func (v VolumeID) String() string {
	access := "rw"
	if v.ReadOnly {
		access = "ro"
	}
	return strings.Join([]string{
		volumeIDPrefix, v.Dataset, access, string(v.OnDelete), v.NameHash,
		url.PathEscape(v.Source.String()), url.PathEscape(v.SubPath),
	}, "#")
}

// ParseVolumeID decodes and validates a volume ID.
func ParseVolumeID(id string) (VolumeID, error) {
	f := strings.Split(id, "#")
	if len(f) != 7 || f[0] != volumeIDPrefix {
		return VolumeID{}, fmt.Errorf("%w: %q", ErrBadVolumeID, truncate(id, 64))
	}
	bad := func(field string, err error) (VolumeID, error) {
		return VolumeID{}, fmt.Errorf("%w: field %s: %v", ErrBadVolumeID, field, err)
	}
	v := VolumeID{Dataset: f[1], OnDelete: OnDelete(f[3]), NameHash: f[4]}
	if !dnsLabel.MatchString(v.Dataset) {
		return bad("dataset", fmt.Errorf("%q is not a DNS label", truncate(v.Dataset, 64)))
	}
	switch f[2] {
	case "ro":
		v.ReadOnly = true
	case "rw":
	default:
		return bad("access", fmt.Errorf("%q is not ro or rw", truncate(f[2], 8)))
	}
	switch v.OnDelete {
	case Retain, Delete, Archive:
	default:
		return bad("onDelete", fmt.Errorf("%q is not retain, delete or archive", truncate(f[3], 16)))
	}
	if v.ReadOnly && v.OnDelete != Retain {
		return bad("onDelete", errors.New("a read-only dataset only retains"))
	}
	if len(v.NameHash) != 16 || strings.Trim(v.NameHash, "0123456789abcdef") != "" {
		return bad("nameHash", errors.New("want 16 lower-case hex digits"))
	}
	src, err := url.PathUnescape(f[5])
	if err != nil {
		return bad("source", err)
	}
	if v.Source, err = api.ParseSource(src); err != nil {
		return bad("source", err)
	}
	if v.SubPath, err = url.PathUnescape(f[6]); err != nil {
		return bad("subPath", err)
	}
	if v.SubPath != "" {
		if err := checkSubPath(v.SubPath); err != nil {
			return bad("subPath", err)
		}
	}
	// The encoding is canonical: anything that does not round-trip was not
	// made by String.
	if v.String() != id {
		return VolumeID{}, fmt.Errorf("%w: not in canonical form", ErrBadVolumeID)
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Package api is the cache daemon's control API: its wire types (typed
// requests and responses for mount, release, warm-up, evict and stats),
// the dataset source URL they carry, and the client that the node plugin
// and the CLI use. It is all they import from the cache.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// ReservedDir is the directory at a dataset's root where Cistern keeps
// its volume records, archives and trash. No volume resolves into it and no
// mount shows it.
const ReservedDir = ".cistern"

// Access patterns of a dataset (MountRequest.AccessPattern).
const (
	PatternDefault    = "default"
	PatternSmallFiles = "small-files"
)

// MountRequest asks the daemon for a dataset's mount (POST /v1/mount).
type MountRequest struct {
	// Holder names who holds the mount (a volume ID or a target path);
	// the dataset stays mounted while it has holders. Mounting again with
	// the same holder is a no-op.
	Holder string `json:"holder"`
	// Dataset is the dataset's name (the dataset parameter).
	Dataset string `json:"dataset"`
	// Source is the canonical source URL (Source.String).
	Source        string        `json:"source"`
	ReadOnly      bool          `json:"readOnly"`
	AccessPattern string        `json:"accessPattern,omitempty"` // "", PatternDefault or PatternSmallFiles
	MetaCache     time.Duration `json:"metaCache"`
	// UID, GID, FileMode and DirMode own an S3 dataset's files and
	// directories (0 modes: 0644 and 0755); a POSIX source shows its real
	// owners and refuses them.
	UID      uint32 `json:"uid,omitempty"`
	GID      uint32 `json:"gid,omitempty"`
	FileMode uint32 `json:"fileMode,omitempty"`
	DirMode  uint32 `json:"dirMode,omitempty"`
	// MountGroup is the volume's fsGroup (CSI VOLUME_MOUNT_GROUP), a
	// decimal gid, for an S3 dataset: it owns the files instead of GID,
	// with group read (and write, on a read-write dataset).
	MountGroup string `json:"mountGroup,omitempty"`
	// Warmup are paths prefetched in the background when the dataset is
	// first mounted ("" = all of it). They do not change what is served,
	// so they are not part of the key.
	Warmup []string `json:"warmup,omitempty"`
	// CacheGroup is the cache group the dataset is read through (the
	// cacheGroup parameter): when it is the daemon's group, the
	// dataset's misses ask the group's members before the source. It
	// does not change what is served, so it is not part of the key.
	CacheGroup string            `json:"cacheGroup,omitempty"`
	Secrets    map[string]string `json:"secrets,omitempty"` // never logged
}

// Key returns the dataset key of a request: it hashes the source, the
// options that change what is served, and the credentials, so two secrets
// never share a mount. salt is the node's own secret: the key shows in
// paths, mounts and stats, and without it anyone could confirm a guessed
// credential by hashing it.
func (r *MountRequest) Key(salt []byte) string {
	h := sha256.New()
	h.Write(salt)
	fmt.Fprintf(h, "source=%s\x00ro=%t\x00pattern=%s\x00metacache=%s\x00", r.Source, r.ReadOnly, r.AccessPattern, r.MetaCache)
	if r.UID != 0 || r.GID != 0 || r.FileMode != 0 || r.DirMode != 0 || r.MountGroup != "" {
		fmt.Fprintf(h, "owner=%d:%d\x00modes=%o:%o\x00group=%s\x00", r.UID, r.GID, r.FileMode, r.DirMode, r.MountGroup)
	}
	keys := make([]string, 0, len(r.Secrets))
	for k := range r.Secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "secret:%s=%s\x00", k, r.Secrets[k])
	}
	return hex.EncodeToString(h.Sum(nil)[:10])
}

// Validate checks a request with the rules the driver applies to the same
// parameters (one source parser for both).
func (r *MountRequest) Validate() error {
	switch {
	case r.Holder == "":
		return errors.New("holder is required")
	case r.Dataset == "":
		return errors.New("dataset is required")
	case r.AccessPattern != "" && r.AccessPattern != PatternDefault && r.AccessPattern != PatternSmallFiles:
		return fmt.Errorf("accessPattern %q: want %s or %s", r.AccessPattern, PatternDefault, PatternSmallFiles)
	case r.AccessPattern == PatternSmallFiles && !r.ReadOnly:
		return errors.New("accessPattern small-files needs a read-only dataset (its files must be immutable)")
	case r.MetaCache < 0:
		return errors.New("metaCache must not be negative")
	}
	src, err := ParseSource(r.Source)
	if err != nil {
		return err
	}
	if r.FileMode > 0o777 || r.DirMode > 0o777 {
		return fmt.Errorf("fileMode %o / dirMode %o: permission bits only (at most 0777)", r.FileMode, r.DirMode)
	}
	if r.MountGroup != "" {
		if _, err := ParseGroup(r.MountGroup); err != nil {
			return err
		}
	}
	if !src.IsS3() && (r.UID != 0 || r.GID != 0 || r.FileMode != 0 || r.DirMode != 0 || r.MountGroup != "") {
		return errors.New("uid, gid, fileMode, dirMode and mountGroup apply to s3:// sources only (a POSIX source shows its real owners)")
	}
	if src.IsS3() {
		if _, err := s3store.CredentialsFromSecrets(r.Secrets); err != nil {
			return err
		}
	}
	return nil
}

// MountResponse says where the dataset is mounted.
type MountResponse struct {
	Key       string `json:"key"`
	MountPath string `json:"mountPath"`
}

// ReleaseRequest drops a holder (POST /v1/release).
type ReleaseRequest struct {
	Holder string `json:"holder"`
}

// EvictRequest drops the cached files of a mounted dataset under a prefix
// ("" = all) (POST /v1/evict).
type EvictRequest struct {
	Key    string `json:"key"`
	Prefix string `json:"prefix,omitempty"`
}

// EvictResponse says how many cached files were dropped.
type EvictResponse struct {
	Evicted int `json:"evicted"`
}

// WarmupRequest prefetches paths of a mounted dataset (POST /v1/warmup);
// the answer is a stream of WarmupProgress lines (NDJSON).
type WarmupRequest struct {
	Key   string   `json:"key"`
	Paths []string `json:"paths"`
}

// WarmupProgress is one line of a warm-up's progress stream.
type WarmupProgress struct {
	File       string `json:"file,omitempty"`
	DoneBytes  int64  `json:"doneBytes"`
	TotalBytes int64  `json:"totalBytes"`
	Files      int    `json:"files"`
	Error      string `json:"error,omitempty"`
	Done       bool   `json:"done,omitempty"`
}

// ErrorResponse is the body of every failed request.
type ErrorResponse struct {
	Error string `json:"error"`
}

// HealthResponse answers GET /healthz when the daemon serves (else an
// ErrorResponse with HTTP 503 says why).
type HealthResponse struct {
	Status string `json:"status"`
}

// StatsResponse is the daemon's view of the node (GET /v1/stats).
type StatsResponse struct {
	Cache    CacheStats    `json:"cache"`
	Datasets []DatasetInfo `json:"datasets"`
	// Group is the daemon's cache group, if it is in one.
	Group *GroupStats `json:"group,omitempty"`
}

// GroupStats describe the daemon's membership of its cache group.
type GroupStats struct {
	Name   string `json:"name"`
	Self   string `json:"self"`
	Listen string `json:"listen"`
	// Members are the IDs of the group's members as last read; Owner is
	// true when this member owns blocks (it is among them, weight > 0).
	Members []string `json:"members"`
	Owner   bool     `json:"owner"`
	// Serving are, by member ID, the public IDs of the datasets each
	// member serves as last read: a dataset's blocks are placed over
	// the members serving it.
	Serving map[string][]string `json:"serving,omitempty"`
	// MembersError is the last failure to read the members ("" = none;
	// the last list read is kept).
	MembersError string `json:"membersError,omitempty"`
	// Datasets counts the datasets read through the group.
	Datasets int `json:"datasets"`
	// PeerBytesIn are block bytes other members sent; BlocksOut and
	// PeerBytesOut the blocks and bytes this member sent them.
	PeerBytesIn  int64 `json:"peerBytesIn"`
	BlocksOut    int64 `json:"blocksOut"`
	PeerBytesOut int64 `json:"peerBytesOut"`
	// ReplicaBlocksOut are the blocks of BlocksOut this member sent as
	// a hot block's replica (the next member in its ranking).
	ReplicaBlocksOut int64 `json:"replicaBlocksOut"`
	// PeerLatency is a histogram of the blocks other members sent: how
	// long each took, asked to received.
	PeerLatency Histogram `json:"peerLatency"`
}

// DatasetInfo describes a mounted dataset.
type DatasetInfo struct {
	Key      string `json:"key"`
	Dataset  string `json:"dataset"`
	Source   string `json:"source"`
	ReadOnly bool   `json:"readOnly"`
	// AccessPattern is what the mount serves: the request's, or the one
	// chosen from a sample of the dataset (see the README).
	AccessPattern string `json:"accessPattern,omitempty"`
	MountPath     string `json:"mountPath"`
	Holders       int    `json:"holders"`
	Reads         int64  `json:"fuseReads"`
	// Nodes is how many files and directories the mount holds in memory
	// for the kernel (bounded by the daemon's --max-inodes).
	Nodes int64        `json:"nodes"`
	Stats DatasetStats `json:"stats"`
	// Warmup is the progress of the warm-up started at mount, if any.
	Warmup *WarmupProgress `json:"warmup,omitempty"`
}

// DatasetStats are one mounted dataset's share of the cache.
type DatasetStats struct {
	Hits        int64            `json:"hits"`
	Misses      int64            `json:"misses"`
	SourceBytes int64            `json:"sourceBytes"`
	Files       int              `json:"files"`
	TierBytes   map[string]int64 `json:"tierBytes"`
}

// CacheStats are the node cache's counters.
type CacheStats struct {
	Hits        int64 // block reads served from a tier
	Misses      int64 // blocks fetched from the source
	ReadThrough int64 // blocks served without storing (tier full or failing)
	Corrupt     int64 // blocks whose checksum failed
	SourceBytes int64 // bytes read from the source
	Evictions   int64 // items evicted
	TierBytes   map[string]int64
	// TierServed counts bytes served from each tier by the daemon (reads
	// of passthrough files go to the kernel and are not seen).
	TierServed map[string]int64
	// SourceLatency is a histogram of source block fetches.
	SourceLatency Histogram
	// Filling counts files read from a POSIX source in passthrough that
	// wait to be cached, or are being cached.
	Filling int
	// IndexLoading is true while the daemon loads the cache index kept
	// on disk after a start (reads are served meanwhile).
	IndexLoading bool
	// Dormant counts cached files not used for --cache-sleep-after, of
	// which the daemon keeps a small record in memory.
	Dormant int64
}

// Histogram is a snapshot: Counts[i] observations fell in (Bounds[i-1],
// Bounds[i]]; the last count is above every bound. Sum is in seconds.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
}

// ParseGroup parses a CSI volume_mount_group: a decimal gid.
func ParseGroup(s string) (uint32, error) {
	g, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("volume mount group %q: want a numeric gid", s)
	}
	return uint32(g), nil
}

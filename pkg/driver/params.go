package driver

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// Dataset parameter keys. The same keys serve StorageClass parameters and
// inline-volume attributes (DESIGN.md, "Dataset parameters").
const (
	ParamDataset    = "dataset"
	ParamSource     = "source"
	ParamAccess     = "access"
	ParamSubPath    = "subPath"
	ParamShared     = "shared"
	ParamCacheGroup = "cacheGroup"
	ParamOnDelete   = "onDelete"
	ParamPattern    = "accessPattern"
	ParamMetaCache  = "metacache"
	ParamWarmup     = "warmup"
	// S3 connection keys (s3:// sources only).
	ParamEndpoint   = api.OptEndpoint
	ParamRegion     = api.OptRegion
	ParamAddressing = api.OptAddressing
	ParamAnonymous  = api.OptAnonymous
	// S3 ownership keys: who owns the files of an object store, which has
	// no owners of its own (s3:// sources only).
	ParamUID      = "uid"
	ParamGID      = "gid"
	ParamFileMode = "fileMode"
	ParamDirMode  = "dirMode"
)

// notYetSupported are keys the design defines that this build does not
// implement. They are refused, never ignored: a user who sets one expects it
// to change behaviour.
var notYetSupported = map[string]bool{
	"cacheTiers":     true,
	"cacheLow":       true,
	"freeSpaceRatio": true,
	"blockSize":      true,
}

// Keys the CO adds to parameters and attributes. They are metadata, not
// dataset parameters.
const (
	metaPrefix       = "csi.storage.k8s.io/"
	MetaPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	MetaPVCName      = "csi.storage.k8s.io/pvc/name"
	MetaPVName       = "csi.storage.k8s.io/pv/name"
	MetaPodNamespace = "csi.storage.k8s.io/pod.namespace"
	MetaEphemeral    = "csi.storage.k8s.io/ephemeral"
)

// provisionerMetaPrefix marks keys external-provisioner adds to the
// volume attributes of every PV it makes (its identity,
// storage.kubernetes.io/csiProvisionerIdentity); the kubelet hands them to
// NodeStage and NodePublish with the dataset's parameters.
const provisionerMetaPrefix = "storage.kubernetes.io/"

// isCOMetadata reports whether a parameter or attribute key is the CO's
// metadata rather than a dataset parameter.
func isCOMetadata(k string) bool {
	return strings.HasPrefix(k, metaPrefix) || strings.HasPrefix(k, provisionerMetaPrefix)
}

// Access says whether a dataset may be written.
type Access string

const (
	ReadOnly  Access = "read-only"
	ReadWrite Access = "read-write"
)

// OnDelete says what DeleteVolume does with a volume's sub-directory.
type OnDelete string

const (
	Retain  OnDelete = "retain"
	Delete  OnDelete = "delete"
	Archive OnDelete = "archive"
)

// DefaultSubPath is the sub-path template of a non-shared dataset.
const DefaultSubPath = "${pvc.namespace}/${pvc.name}"

// DefaultInlineSubPath is the sub-path template of a non-shared inline volume.
const DefaultInlineSubPath = "${pod.namespace}"

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Params are validated dataset parameters.
type Params struct {
	Dataset    string
	Source     api.Source
	Access     Access
	SubPath    string // the template, see ResolveSubPath
	Shared     bool
	CacheGroup string
	OnDelete   OnDelete
	// AccessPattern is accessPattern: "" (the cache daemon chooses from a
	// sample of a read-only dataset), "default" or "small-files" (many
	// small immutable files, served without per-open round trips).
	AccessPattern string
	// MetaCache is how long listings and attributes are trusted.
	MetaCache time.Duration
	// Owner owns an S3 dataset's files.
	Owner Owner
	// Warmup are paths (relative to the dataset root) prefetched when the
	// dataset is first mounted on a node.
	Warmup []string
}

// ReadOnly reports whether the dataset may not be written.
func (p *Params) ReadOnly() bool { return p.Access == ReadOnly }

// ParseParams validates dataset parameters. Keys under csi.storage.k8s.io/
// are CO metadata and are skipped; every other key must be known. inline
// selects the defaults and template variables of an ephemeral inline volume.
func ParseParams(m map[string]string, inline bool) (*Params, error) {
	var unknown []string
	for k := range m {
		if isCOMetadata(k) {
			continue
		}
		switch k {
		case ParamDataset, ParamSource, ParamAccess, ParamSubPath, ParamShared, ParamCacheGroup, ParamOnDelete, ParamPattern, ParamMetaCache, ParamWarmup,
			ParamEndpoint, ParamRegion, ParamAddressing, ParamAnonymous, ParamUID, ParamGID, ParamFileMode, ParamDirMode:
		default:
			if notYetSupported[k] {
				return nil, fmt.Errorf("parameter %q is not supported yet", k)
			}
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown parameter %q (known: dataset, source, endpoint, region, addressing, anonymous, uid, gid, fileMode, dirMode, access, accessPattern, subPath, shared, cacheGroup, onDelete, metacache, warmup)", unknown[0])
	}

	p := &Params{Dataset: m[ParamDataset], CacheGroup: m[ParamCacheGroup]}
	if p.Dataset == "" {
		return nil, fmt.Errorf("parameter %s is required", ParamDataset)
	}
	if !dnsLabel.MatchString(p.Dataset) {
		return nil, fmt.Errorf("parameter %s %q must be a DNS label (lower-case letters, digits and '-', at most 63)", ParamDataset, p.Dataset)
	}
	if strings.Contains(m[ParamSource], "?") {
		return nil, fmt.Errorf("parameter %s %q must not have a query: S3 connection options are the parameters %s, %s, %s and %s", ParamSource, m[ParamSource], ParamEndpoint, ParamRegion, ParamAddressing, ParamAnonymous)
	}
	src, err := api.ParseSource(m[ParamSource])
	if err != nil {
		return nil, fmt.Errorf("parameter %w", err)
	}
	if err := src.ApplyOptions(m); err != nil {
		return nil, err
	}
	if p.Owner, err = parseOwner(src, m); err != nil {
		return nil, err
	}
	p.Source = src

	if v, ok := m[ParamShared]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %s %q must be true or false", ParamShared, v)
		}
		p.Shared = b
	}

	switch a := Access(m[ParamAccess]); a {
	case "":
		p.Access = ReadOnly
	case ReadOnly, ReadWrite:
		p.Access = a
	default:
		return nil, fmt.Errorf("parameter %s %q must be read-only or read-write", ParamAccess, a)
	}
	if p.Shared && p.Access == ReadWrite {
		return nil, fmt.Errorf("parameter %s=read-write conflicts with %s=true: a shared dataset is served read-only to every namespace", ParamAccess, ParamShared)
	}

	switch d := OnDelete(m[ParamOnDelete]); d {
	case "":
		p.OnDelete = Retain
	case Retain, Delete, Archive:
		p.OnDelete = d
	default:
		return nil, fmt.Errorf("parameter %s %q must be retain, delete or archive", ParamOnDelete, d)
	}
	if p.OnDelete != Retain && p.ReadOnly() {
		return nil, fmt.Errorf("parameter %s=%s needs access=read-write: the controller never writes into a read-only dataset", ParamOnDelete, p.OnDelete)
	}

	switch v := m[ParamPattern]; v {
	case "", api.PatternDefault:
		p.AccessPattern = v
	case api.PatternSmallFiles:
		if !p.ReadOnly() {
			return nil, fmt.Errorf("parameter %s=small-files needs access=read-only: it serves files as immutable", ParamPattern)
		}
		p.AccessPattern = v
	default:
		return nil, fmt.Errorf("parameter %s %q must be default or small-files", ParamPattern, v)
	}
	p.MetaCache = time.Second
	if p.ReadOnly() {
		p.MetaCache = time.Hour
	}
	if v, ok := m[ParamMetaCache]; ok {
		d, err := time.ParseDuration(v)
		if v == "0" {
			d, err = 0, nil
		}
		if err != nil || d < 0 || d > 24*time.Hour {
			return nil, fmt.Errorf("parameter %s %q must be a duration between 0 and 24h, such as 1h, 30s or 0", ParamMetaCache, v)
		}
		p.MetaCache = d
	}
	if v := m[ParamWarmup]; v != "" {
		for _, w := range strings.Split(v, ",") {
			w = strings.TrimSpace(w)
			rel := strings.Trim(w, "/")
			if rel == "" {
				p.Warmup = append(p.Warmup, "") // the whole dataset
				continue
			}
			if strings.Contains(w, "//") {
				return nil, fmt.Errorf("parameter %s: path %q has an empty segment", ParamWarmup, w)
			}
			if err := checkSubPath(rel); err != nil {
				return nil, fmt.Errorf("parameter %s: path %q: %w", ParamWarmup, w, err)
			}
			p.Warmup = append(p.Warmup, rel)
		}
		if len(p.Warmup) > 64 {
			return nil, fmt.Errorf("parameter %s names %d paths; at most 64", ParamWarmup, len(p.Warmup))
		}
	}
	if p.CacheGroup != "" && !dnsLabel.MatchString(p.CacheGroup) {
		return nil, fmt.Errorf("parameter %s %q must be a DNS label", ParamCacheGroup, p.CacheGroup)
	}

	tmpl, given := m[ParamSubPath]
	switch {
	case given:
	case p.Shared:
		tmpl = "" // a shared dataset is served whole unless told otherwise
	case inline:
		tmpl = DefaultInlineSubPath
	default:
		tmpl = DefaultSubPath
	}
	if err := checkTemplate(tmpl, inline, p.Shared); err != nil {
		return nil, err
	}
	p.SubPath = tmpl
	return p, nil
}

// Context returns the canonical parameters, as CreateVolume hands them to the
// node in volume_context. ParseParams(p.Context(), false) yields p again.
func (p *Params) Context() map[string]string {
	m := map[string]string{
		ParamDataset:  p.Dataset,
		ParamSource:   p.Source.URL(),
		ParamAccess:   string(p.Access),
		ParamSubPath:  p.SubPath,
		ParamShared:   strconv.FormatBool(p.Shared),
		ParamOnDelete: string(p.OnDelete),
	}
	if p.CacheGroup != "" {
		m[ParamCacheGroup] = p.CacheGroup
	}
	if l := p.Source.S3; p.Source.IsS3() {
		for k, v := range map[string]string{ParamEndpoint: l.Endpoint, ParamRegion: l.Region, ParamAddressing: l.Addressing} {
			if v != "" {
				m[k] = v
			}
		}
		if l.Anonymous {
			m[ParamAnonymous] = "true"
		}
		o := p.Owner
		for k, v := range map[string]string{ParamUID: strconv.FormatUint(uint64(o.UID), 10), ParamGID: strconv.FormatUint(uint64(o.GID), 10),
			ParamFileMode: fmt.Sprintf("%04o", o.FileMode), ParamDirMode: fmt.Sprintf("%04o", o.DirMode)} {
			if v != "0" && v != "0000" {
				m[k] = v
			}
		}
	}
	if p.AccessPattern != "" {
		m[ParamPattern] = p.AccessPattern
	}
	m[ParamMetaCache] = p.MetaCache.String()
	if len(p.Warmup) > 0 {
		ws := make([]string, len(p.Warmup))
		for i, w := range p.Warmup {
			ws[i] = "/" + w
		}
		m[ParamWarmup] = strings.Join(ws, ",")
	}
	return m
}

// Owner is who owns an S3 dataset's files and with which modes (zero:
// root, 0644 files, 0755 directories).
type Owner struct {
	UID, GID          uint32
	FileMode, DirMode uint32
}

// parseOwner reads the S3 ownership parameters: uid and gid as decimal
// ids, fileMode and dirMode as octal permission bits.
func parseOwner(src api.Source, m map[string]string) (Owner, error) {
	var o Owner
	for _, k := range []string{ParamUID, ParamGID, ParamFileMode, ParamDirMode} {
		v, ok := m[k]
		if !ok {
			continue
		}
		if !src.IsS3() {
			return Owner{}, fmt.Errorf("parameter %s applies to s3:// sources only: a POSIX source shows its files' real owners and modes", k)
		}
		switch k {
		case ParamUID, ParamGID:
			n, err := strconv.ParseUint(v, 10, 31)
			if err != nil {
				return Owner{}, fmt.Errorf("parameter %s %q must be a numeric id", k, v)
			}
			if k == ParamUID {
				o.UID = uint32(n)
			} else {
				o.GID = uint32(n)
			}
		default:
			n, err := strconv.ParseUint(v, 8, 32)
			if err != nil || n > 0o777 || n == 0 {
				return Owner{}, fmt.Errorf("parameter %s %q must be octal permission bits such as 0644 (at most 0777)", k, v)
			}
			if k == ParamFileMode {
				o.FileMode = uint32(n)
			} else {
				o.DirMode = uint32(n)
			}
		}
	}
	return o, nil
}

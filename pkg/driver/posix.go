package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// posixDataset operates on a file:// dataset's tree. Every path it takes is a
// sub-path relative to the root, and every one is resolved with openat2
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: no component may be a symbolic link
// (inside the dataset or pointing out) and nothing may resolve outside the
// root. Refusing symlinks inside the dataset too keeps namespaces apart: a pod
// that can write team-a/x cannot plant team-a/x/l -> ../../team-b for a later
// volume to follow.
type posixDataset struct {
	root string
}

// ErrEscapes is returned when a sub-path crosses a symbolic link or leaves
// the dataset root.
var ErrEscapes = errors.New("sub-path crosses a symbolic link or leaves the dataset root")

const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

func (d posixDataset) openRoot() (int, error) {
	fd, err := unix.Open(d.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dataset root %s: %w", d.root, err)
	}
	return fd, nil
}

func openBeneath(dirfd int, rel string) (int, error) {
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: resolveFlags,
	})
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("%q: %w", rel, ErrEscapes)
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("%q: %w", rel, fs.ErrNotExist)
	case errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("%q: a component is not a directory: %w", rel, ErrInvalidSubPath)
	}
	return -1, fmt.Errorf("open %q: %w", rel, err)
}

// OpenDir opens root/sub as an O_PATH directory. "" is the root itself. The
// caller closes the file; binding /proc/<pid>/fd/<n> mounts exactly the
// directory that was checked, whatever happens to the path afterwards.
func (d posixDataset) OpenDir(sub string) (*os.File, error) {
	rfd, err := d.openRoot()
	if err != nil {
		return nil, err
	}
	if sub == "" {
		return os.NewFile(uintptr(rfd), d.root), nil
	}
	defer unix.Close(rfd)
	fd, err := openBeneath(rfd, sub)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(d.root, sub)), nil
}

// Exists reports whether root/sub is a directory reachable under the rules.
func (d posixDataset) Exists(sub string) (bool, error) {
	f, err := d.OpenDir(sub)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f.Close()
	return true, nil
}

// MkdirAll creates root/sub and its parents, mode 0755, refusing symlinks.
func (d posixDataset) MkdirAll(sub string) error {
	fd, err := d.openRoot()
	if err != nil {
		return err
	}
	for _, seg := range strings.Split(sub, "/") {
		if err := unix.Mkdirat(fd, seg, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return fmt.Errorf("mkdir %q in %s: %w", seg, d.root, err)
		}
		next, err := openBeneath(fd, seg)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = next
	}
	unix.Close(fd)
	return nil
}

// moveAway renames root/sub to root/dstDir/dstName, creating dstDir. The
// rename is relative to the already-opened parent, so a path swapped for a
// symlink after the check moves the link, never what it points to.
func (d posixDataset) moveAway(sub, dstDir, dstName string) error {
	parent, base := path.Split(sub)
	pf, err := d.OpenDir(strings.TrimSuffix(parent, "/"))
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := d.MkdirAll(dstDir); err != nil {
		return err
	}
	df, err := d.OpenDir(dstDir)
	if err != nil {
		return err
	}
	defer df.Close()
	if err := unix.Renameat(int(pf.Fd()), base, int(df.Fd()), dstName); err != nil {
		return fmt.Errorf("move %q to %s/%s: %w", sub, dstDir, dstName, err)
	}
	return nil
}

// Trash renames root/sub into .cistern/trash (atomic: the volume disappears
// whole or not at all) and returns the trash entry's absolute path, for the
// caller to remove with EmptyTrash outside its locks.
func (d posixDataset) Trash(sub string) error {
	if sub == "" {
		return fmt.Errorf("refusing to remove the root of dataset %s", d.root)
	}
	name := fmt.Sprintf("%s-%d", NameHash(sub), time.Now().UnixNano())
	return d.moveAway(sub, path.Join(ReservedDir, "trash"), name)
}

// EmptyTrash removes everything in .cistern/trash, including what a crash
// left there. os.RemoveAll never follows symbolic links.
func (d posixDataset) EmptyTrash() error {
	return os.RemoveAll(filepath.Join(d.root, ReservedDir, "trash"))
}

// Archive moves root/sub to .cistern/archive/<sub>-<UTC time> and returns that
// sub-path.
func (d posixDataset) Archive(sub string, now time.Time) (string, error) {
	if sub == "" {
		return "", fmt.Errorf("refusing to archive the root of dataset %s", d.root)
	}
	dir, base := path.Split(sub)
	dstDir := path.Join(ReservedDir, "archive", dir)
	name := base + "-" + now.UTC().Format("20060102T150405.000000000Z")
	if err := d.moveAway(sub, dstDir, name); err != nil {
		return "", err
	}
	return path.Join(dstDir, name), nil
}

// volumeRecord is what the controller remembers of a volume it created. It is
// stored in the dataset (.cistern/volumes/<nameHash>.json) so the controller
// stays stateless and the record travels with the data.
type volumeRecord struct {
	Name          string    `json:"name"`
	VolumeID      string    `json:"volumeID"`
	SubPath       string    `json:"subPath"`
	Fingerprint   string    `json:"fingerprint"`
	CapacityBytes int64     `json:"capacityBytes"`
	Created       time.Time `json:"created"`
}

// recordStore keeps volume records as JSON files in one directory.
type recordStore struct {
	dir string
}

func (s recordStore) file(hash string) string { return filepath.Join(s.dir, hash+".json") }

// Get returns the record, or fs.ErrNotExist.
func (s recordStore) Get(hash string) (*volumeRecord, error) {
	b, err := os.ReadFile(s.file(hash))
	if err != nil {
		return nil, err
	}
	var r volumeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("volume record %s: %w", s.file(hash), err)
	}
	return &r, nil
}

// Put writes the record atomically (temp file, fsync, rename).
func (s recordStore) Put(hash string, r *volumeRecord) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-"+hash+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.file(hash))
}

// Delete removes the record; a missing record is not an error.
func (s recordStore) Delete(hash string) error {
	err := os.Remove(s.file(hash))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// List returns every record in the store.
func (s recordStore) List() ([]*volumeRecord, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*volumeRecord
	for _, e := range ents {
		hash, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		r, err := s.Get(hash)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

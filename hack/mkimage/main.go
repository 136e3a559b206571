// Command mkimage writes a container image as a docker-archive tarball
// (what `ctr images import` and `docker load` read) without a Docker engine
// or a registry: one layer made of the files, symbolic links and busybox
// applets it is told to add, plus the image's entrypoint and environment.
//
//	mkimage -out cistern.tar -ref cistern/cistern:dev \
//	  -add /usr/local/bin/cistern-csi=bin/cistern-csi \
//	  -add /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt \
//	  -busybox /bin/busybox -entrypoint /usr/local/bin/cistern-csi
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// epoch is every entry's modification time: the same inputs make the same
// layer digest.
var epoch = time.Unix(0, 0)

func main() {
	var adds, links, envs list
	out := flag.String("out", "", "the docker-archive tarball to write (required)")
	ref := flag.String("ref", "", "the image's name and tag, e.g. cistern/cistern:dev (required)")
	entry := flag.String("entrypoint", "", "comma-separated entrypoint")
	cmd := flag.String("cmd", "", "comma-separated default arguments")
	busybox := flag.String("busybox", "", "a static busybox binary: installed as /bin/busybox with a link per applet")
	flag.Var(&adds, "add", "DEST=SRC: the file SRC at DEST in the image, mode kept (repeatable)")
	flag.Var(&links, "link", "DEST=TARGET: a symbolic link (repeatable)")
	flag.Var(&envs, "env", "K=V in the image's environment (repeatable)")
	flag.Parse()
	if *out == "" || *ref == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*out, *ref, *entry, *cmd, *busybox, adds, links, envs); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(out, ref, entry, cmd, busybox string, adds, links, envs []string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("-ref %q: %w", ref, err)
	}
	l := newLayer()
	for _, a := range adds {
		dest, src, ok := strings.Cut(a, "=")
		if !ok || !path.IsAbs(dest) || src == "" {
			return fmt.Errorf("-add %q: want /DEST=SRC", a)
		}
		if err := l.file(dest, src); err != nil {
			return err
		}
	}
	if busybox != "" {
		if err := l.file("/bin/busybox", busybox); err != nil {
			return err
		}
		applets, err := exec.Command(busybox, "--list-full").Output()
		if err != nil {
			return fmt.Errorf("%s --list-full: %w", busybox, err)
		}
		for _, a := range strings.Fields(string(applets)) {
			if a != "bin/busybox" {
				l.links["/"+a] = "/bin/busybox"
			}
		}
	}
	for _, k := range links {
		dest, target, ok := strings.Cut(k, "=")
		if !ok || !path.IsAbs(dest) || target == "" {
			return fmt.Errorf("-link %q: want /DEST=TARGET", k)
		}
		l.links[dest] = target
	}
	layer, err := l.build()
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: epoch}
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}, envs...)
	if entry != "" {
		cf.Config.Entrypoint = strings.Split(entry, ",")
	}
	if cmd != "" {
		cf.Config.Cmd = strings.Split(cmd, ",")
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// layer collects a layer's entries; directories are implied by paths.
type layer struct {
	files map[string]string // dest -> source path
	links map[string]string // dest -> target
}

func newLayer() *layer { return &layer{files: map[string]string{}, links: map[string]string{}} }

func (l *layer) file(dest, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	l.files[dest] = src
	return nil
}

// build writes the layer's tar in memory, sorted, parents first.
func (l *layer) build() (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var names []string
	for d := range l.files {
		names = append(names, d)
	}
	for d := range l.links {
		if _, dup := l.files[d]; dup {
			return nil, fmt.Errorf("%s is both a file and a link", d)
		}
		names = append(names, d)
	}
	sort.Strings(names)
	mkdirs := func(p string) error {
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[i][1:] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		if err := mkdirs(n); err != nil {
			return nil, err
		}
		if target, ok := l.links[n]; ok {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n[1:], Linkname: target, Mode: 0o777, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		if err := addFile(tw, n, l.files[n]); err != nil {
			return nil, err
		}
	}
	// /tmp, as programs expect it.
	if !dirs["/tmp"] {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

func addFile(tw *tar.Writer, dest, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dest[1:], Size: fi.Size(), Mode: int64(fi.Mode().Perm()), ModTime: epoch}); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err == nil && n != fi.Size() {
		err = errors.New("changed while being read")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

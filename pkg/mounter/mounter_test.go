package mounter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for real bind mounts")
	}
}

// TestBindMountReal bind-mounts for real: a read-only bind refuses writes
// with EROFS, Inspect sees the flag, Cleanup unmounts and removes.
func TestBindMountReal(t *testing.T) {
	requireRoot(t)
	m := New()
	dir := t.TempDir()
	src, ro, rw := filepath.Join(dir, "src"), filepath.Join(dir, "ro"), filepath.Join(dir, "rw")
	for _, p := range []string{src, ro, rw} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, p := range []string{ro, rw} {
			_ = Cleanup(context.Background(), m, p, time.Second)
		}
	})
	if err := BindMount(m, src, ro, true); err != nil {
		t.Fatal(err)
	}
	if err := BindMount(m, src, rw, false, "noexec"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through a read-only bind: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write through a read-write bind: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(ro, "f")); err != nil || string(b) != "x" {
		t.Fatalf("read through the read-only bind = %q, %v", b, err)
	}
	for p, want := range map[string]bool{ro: true, rw: false} {
		st, err := Inspect(m, p)
		if err != nil || !st.Mounted || st.ReadOnly != want {
			t.Fatalf("Inspect(%s) = %+v, %v; want mounted, readOnly=%t", p, st, err, want)
		}
	}
	if st, err := Inspect(m, src); err != nil || st.Mounted {
		t.Fatalf("Inspect(source) = %+v, %v; want not mounted", st, err)
	}
	if _, err := Inspect(m, filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Fatalf("Inspect(missing) error = %v, want not-exist", err)
	}
	refs, err := MountRefs(m, dir)
	if err != nil || len(refs) != 2 {
		t.Fatalf("MountRefs = %v, %v; want the two binds", refs, err)
	}
	for _, p := range []string{ro, rw} {
		if err := Cleanup(context.Background(), m, p, time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s not removed after cleanup: %v", p, err)
		}
	}
	if refs, _ := MountRefs(m, dir); len(refs) != 0 {
		t.Fatalf("mounts left: %v", refs)
	}
	// Cleanup of a path that is gone is success (idempotent).
	if err := Cleanup(context.Background(), m, ro, time.Second); err != nil {
		t.Fatal(err)
	}
}

package keeper

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// TestKeeper: a descriptor handed to the keeper outlives the sender's copy
// and comes back working with the entry (secrets included); an update
// without a descriptor keeps the held one; drop closes it; a keeper that
// restarts has a new instance and holds nothing; the socket is root's only.
func TestKeeper(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "keeper.sock")
	k, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { k.Close() }()
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("keeper socket mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	c := NewClient(sock)
	defer c.Close()
	first, err := c.Hello()
	if err != nil {
		t.Fatal(err)
	}

	r, w, err := os.Pipe() // stands for a /dev/fuse descriptor
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e := Entry{Key: "k1", Request: api.MountRequest{Dataset: "ds", Secrets: map[string]string{"secret-key": "s"}}, Holders: []string{"volume:a"},
		Init: []byte{1, 2, 3}, Epoch: 2, Dev: w}
	if err := c.Put(e); err != nil {
		t.Fatal(err)
	}
	w.Close() // the keeper's copy keeps the pipe open
	if err := c.Put(Entry{Key: "k1", Request: e.Request, Holders: []string{"volume:a", "volume:b"}, Init: e.Init, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	got := list[0]
	if got.Key != "k1" || got.Request.Secrets["secret-key"] != "s" || len(got.Holders) != 2 || string(got.Init) != "\x01\x02\x03" || got.Epoch != 2 {
		t.Errorf("entry %+v", got)
	}
	if _, err := got.Dev.Write([]byte("x")); err != nil {
		t.Fatalf("the descriptor that came back: %v", err)
	}
	got.Dev.Close()
	b := make([]byte, 1)
	if n, err := r.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("read %q, %v", b[:n], err)
	}

	if err := c.Drop("k1"); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(b); n != 0 || err == nil {
		t.Errorf("after drop the pipe's write end is still open somewhere (read %d, %v)", n, err)
	}

	k.Close()
	if k, err = Listen(sock); err != nil {
		t.Fatal(err)
	}
	second, err := c.Hello() // the client dials again
	if err != nil || second == first {
		t.Errorf("instance after a restart %q (was %q), %v", second, first, err)
	}
	if list, err := c.List(); err != nil || len(list) != 0 {
		t.Errorf("a restarted keeper holds %d entries, %v", len(list), err)
	}
}

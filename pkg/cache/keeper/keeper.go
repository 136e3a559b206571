// Package keeper keeps the cache daemon's FUSE connections alive while the
// daemon is gone. A FUSE connection lives as long as any descriptor of it
// is open: the daemon hands a duplicate of each /dev/fuse descriptor, with
// what it needs to serve the dataset again, to a keeper in another process
// (the node plugin) over a unix socket (SCM_RIGHTS). A daemon that starts
// takes the connections back from the keeper and serves them on; a keeper
// that starts empty is given them again by the daemon.
//
// What an entry holds (the dataset's credentials too) stays in the
// keeper's memory; the socket is root's only.
package keeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// Entry is one dataset's FUSE connection and what serves it again.
type Entry struct {
	Key     string           `json:"key"`
	Request api.MountRequest `json:"request"` // with its secrets
	Pattern string           `json:"pattern"` // the access pattern the daemon serves (chosen when the request has none)
	Holders []string         `json:"holders"` // the volumes that hold the dataset
	Init    []byte           `json:"init"`    // the kernel's INIT request
	Epoch   uint16           `json:"epoch"`
	// Dev is the connection's /dev/fuse descriptor (the keeper's own
	// duplicate; a receiver owns what it is given).
	Dev *os.File `json:"-"`
}

// message is one request or answer on the socket: one packet, with a
// descriptor when an entry carries one.
type message struct {
	Op       string `json:"op"` // put, drop, list, hello; answers: entry, end, ok, error
	Key      string `json:"key,omitempty"`
	Entry    *Entry `json:"entry,omitempty"`
	Instance string `json:"instance,omitempty"` // hello: the keeper's
	Error    string `json:"error,omitempty"`
}

const maxMessage = 1 << 20

// send writes m, passing f's descriptor along if f is not nil.
func send(c *net.UnixConn, m message, f *os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if f != nil {
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		if cerr := rc.Control(func(fd uintptr) { oob = syscall.UnixRights(int(fd)) }); cerr != nil {
			return cerr
		}
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// receive reads one message and the descriptor it carries (nil if none).
func receive(c *net.UnixConn) (message, *os.File, error) {
	b := make([]byte, maxMessage)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		return message{}, nil, err
	}
	if n == 0 {
		return message{}, nil, errors.New("keeper: connection closed")
	}
	var f *os.File
	if oobn > 0 {
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, nil, err
		}
		for _, cm := range msgs {
			fds, err := syscall.ParseUnixRights(&cm)
			if err != nil {
				continue
			}
			for i, fd := range fds {
				syscall.CloseOnExec(fd)
				if i == 0 && f == nil {
					f = os.NewFile(uintptr(fd), "/dev/fuse")
				} else {
					syscall.Close(fd)
				}
			}
		}
	}
	var m message
	if err := json.Unmarshal(b[:n], &m); err != nil {
		if f != nil {
			f.Close()
		}
		return message{}, nil, fmt.Errorf("keeper: %w", err)
	}
	if m.Entry != nil {
		m.Entry.Dev = f
	} else if f != nil {
		f.Close()
	}
	return m, f, nil
}

// Keeper holds entries for a daemon.
type Keeper struct {
	instance string
	ln       *net.UnixListener

	mu      sync.Mutex
	entries map[string]*Entry
	conns   map[*net.UnixConn]bool // clients being served
	wg      sync.WaitGroup
}

// Listen serves a keeper on the unix socket at path (root's only).
func Listen(path string) (*Keeper, error) {
	_ = os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	var id [8]byte
	if f, err := os.Open("/dev/urandom"); err == nil {
		_, _ = f.Read(id[:])
		f.Close()
	}
	k := &Keeper{instance: fmt.Sprintf("%x", id), ln: ln, entries: map[string]*Entry{}, conns: map[*net.UnixConn]bool{}}
	k.wg.Add(1)
	go k.accept()
	return k, nil
}

// Len returns how many connections the keeper holds.
func (k *Keeper) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.entries)
}

// Close stops serving and closes every descriptor it holds: a connection
// nobody else holds ends.
func (k *Keeper) Close() error {
	err := k.ln.Close()
	k.mu.Lock()
	for c := range k.conns {
		c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	for key, e := range k.entries {
		e.Dev.Close()
		delete(k.entries, key)
	}
	return err
}

func (k *Keeper) accept() {
	defer k.wg.Done()
	for {
		c, err := k.ln.AcceptUnix()
		if err != nil {
			return
		}
		k.mu.Lock()
		k.conns[c] = true
		k.mu.Unlock()
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			k.serve(c)
			k.mu.Lock()
			delete(k.conns, c)
			k.mu.Unlock()
			c.Close()
		}()
	}
}

// serve answers one client until it leaves.
func (k *Keeper) serve(c *net.UnixConn) {
	for {
		m, f, err := receive(c)
		if err != nil {
			return
		}
		var reply error
		switch m.Op {
		case "hello":
			reply = send(c, message{Op: "ok", Instance: k.instance}, nil)
		case "put":
			if m.Entry == nil || m.Entry.Key == "" {
				if f != nil {
					f.Close()
				}
				reply = send(c, message{Op: "error", Error: "put without an entry"}, nil)
				break
			}
			k.put(m.Entry)
			reply = send(c, message{Op: "ok"}, nil)
		case "drop":
			k.mu.Lock()
			if e := k.entries[m.Key]; e != nil {
				e.Dev.Close()
				delete(k.entries, m.Key)
			}
			k.mu.Unlock()
			reply = send(c, message{Op: "ok"}, nil)
		case "list":
			k.mu.Lock()
			list := make([]Entry, 0, len(k.entries))
			for _, e := range k.entries {
				list = append(list, *e)
			}
			k.mu.Unlock()
			for i := range list {
				if reply = send(c, message{Op: "entry", Entry: &list[i]}, list[i].Dev); reply != nil {
					break
				}
			}
			if reply == nil {
				reply = send(c, message{Op: "end"}, nil)
			}
		default:
			if f != nil {
				f.Close()
			}
			reply = send(c, message{Op: "error", Error: "unknown operation " + m.Op}, nil)
		}
		if reply != nil {
			return
		}
	}
}

// put stores e; an entry without a descriptor updates what is stored.
func (k *Keeper) put(e *Entry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.entries[e.Key]
	if e.Dev == nil {
		if old == nil {
			return // nothing to update
		}
		e.Dev = old.Dev
	} else if old != nil {
		old.Dev.Close()
	}
	k.entries[e.Key] = e
}

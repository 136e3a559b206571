package keeper

import (
	"errors"
	"net"
	"os"
	"sync"
)

// Client is the daemon's side of a keeper.
type Client struct {
	path string

	mu sync.Mutex
	c  *net.UnixConn // guarded by mu; nil until dialed
}

// NewClient returns a client of the keeper at path (dialed on use).
func NewClient(path string) *Client { return &Client{path: path} }

// call sends m (with f's descriptor) and returns the answer, dialing again
// once if the connection broke (a keeper that restarted).
func (c *Client) call(m message, f *os.File) (message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if c.c == nil {
			if c.c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.path, Net: "unixpacket"}); err != nil {
				c.c = nil
				return message{}, err
			}
		}
		if err = send(c.c, m, f); err == nil {
			var reply message
			if reply, _, err = receive(c.c); err == nil {
				if reply.Op == "error" {
					return reply, errors.New("keeper: " + reply.Error)
				}
				return reply, nil
			}
		}
		c.c.Close()
		c.c = nil
	}
	return message{}, err
}

// Hello returns the keeper's instance: it changes when the keeper
// restarts (and holds nothing).
func (c *Client) Hello() (string, error) {
	r, err := c.call(message{Op: "hello"}, nil)
	return r.Instance, err
}

// Put hands e (and its descriptor, e.Dev, which the caller keeps) to the
// keeper; without a descriptor it updates a stored entry.
func (c *Client) Put(e Entry) error {
	_, err := c.call(message{Op: "put", Entry: &e}, e.Dev)
	return err
}

// Drop has the keeper close and forget key's connection.
func (c *Client) Drop(key string) error {
	_, err := c.call(message{Op: "drop", Key: key}, nil)
	return err
}

// List returns every entry the keeper holds, each with its own
// descriptor (the caller's to close).
func (c *Client) List() ([]Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: c.path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := send(conn, message{Op: "list"}, nil); err != nil {
		return nil, err
	}
	var out []Entry
	for {
		m, _, err := receive(conn)
		if err != nil {
			for _, e := range out {
				e.Dev.Close()
			}
			return nil, err
		}
		switch {
		case m.Op == "end":
			return out, nil
		case m.Op == "entry" && m.Entry != nil && m.Entry.Dev != nil:
			out = append(out, *m.Entry)
		}
	}
}

// Close closes the client's connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	err := c.c.Close()
	c.c = nil
	return err
}

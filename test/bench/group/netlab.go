package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// lab is a few simulated nodes on this machine: a hub network namespace
// with a bridge, and one namespace per member with a veth on that bridge,
// all in one private /24 that exists only inside them. No namespace has a
// default route: nothing the members send can leave the machine. close
// deletes every namespace and link the lab made.
type lab struct {
	tag   string         // in every name the lab makes
	net   string         // "10.231.N.": the lab's /24
	hub   string         // the namespace with the bridge (and the store model)
	nodes map[int]string // member -> its namespace
}

func newLab() (*lab, error) {
	tag := fmt.Sprintf("%04x", rand.IntN(1<<16))
	l := &lab{tag: tag, net: fmt.Sprintf("10.231.%d.", rand.IntN(256)), hub: "cgrp-hub-" + tag, nodes: map[int]string{}}
	err := ipSteps(
		[]string{"netns", "add", l.hub},
		[]string{"-n", l.hub, "link", "set", "lo", "up"},
		// The bridge's address set once: a bridge left to choose takes
		// its ports' lowest, and a member added later with a lower one
		// changed it under the members that had the old one in their ARP
		// tables: their packets to the hub (the store model) went nowhere
		// until the entry was found stale (a read stalled 30-50 s, on
		// one or two members, in some runs). CNI's bridge plugin sets
		// its bridge's address for the same reason (containernetworking/
		// cni#285).
		[]string{"-n", l.hub, "link", "add", "br0", "address", "02:00:00:00:00:01", "type", "bridge"},
		[]string{"-n", l.hub, "addr", "add", l.hubAddr() + "/24", "dev", "br0"},
		[]string{"-n", l.hub, "link", "set", "br0", "up"},
	)
	if err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *lab) hubAddr() string   { return l.net + "1" }
func (l *lab) addr(i int) string { return fmt.Sprintf("%s%d", l.net, 10+i) }

// link is member i's veth end on the bridge (taking it down cuts the
// member off).
func (l *lab) link(i int) string { return fmt.Sprintf("cg%s-%d", l.tag, i) }

// addNode makes member i's namespace, wired to the bridge.
func (l *lab) addNode(i int) error {
	ns, peer := fmt.Sprintf("cgrp-%d-%s", i, l.tag), fmt.Sprintf("cp%s-%d", l.tag, i)
	l.nodes[i] = ns
	return ipSteps(
		[]string{"netns", "add", ns},
		[]string{"-n", ns, "link", "set", "lo", "up"},
		[]string{"link", "add", l.link(i), "type", "veth", "peer", "name", peer},
		[]string{"link", "set", l.link(i), "netns", l.hub},
		[]string{"link", "set", peer, "netns", ns},
		[]string{"-n", ns, "link", "set", peer, "name", "eth0"},
		[]string{"-n", ns, "addr", "add", l.addr(i) + "/24", "dev", "eth0"},
		[]string{"-n", ns, "link", "set", "eth0", "up"},
		[]string{"-n", l.hub, "link", "set", l.link(i), "master", "br0", "up"},
	)
}

// setLink takes member i's link on the bridge up or down.
func (l *lab) setLink(i int, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ipSteps([]string{"-n", l.hub, "link", "set", l.link(i), state})
}

// nsenter returns the command running bin with args in member i's
// network namespace (and this process's other namespaces: its FUSE
// mounts are the host's).
func (l *lab) nsenter(i int, bin string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + l.nodes[i], "--", bin}, args...)...)
}

// listenHub listens on the hub's address: the socket is made in the hub's
// namespace (connections this process makes from it are the host's).
func (l *lab) listenHub() (net.Listener, error) {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer self.Close()
	hub, err := os.Open("/run/netns/" + l.hub)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer hub.Close()
	if err := unix.Setns(int(hub.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter %s: %w", l.hub, err)
	}
	lis, lerr := net.Listen("tcp", l.hubAddr()+":0")
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays in the hub's namespace: leaving it locked
		// ends the thread with the goroutine.
		if lis != nil {
			lis.Close()
		}
		return nil, fmt.Errorf("leave %s: %w", l.hub, err)
	}
	runtime.UnlockOSThread()
	return lis, lerr
}

// close deletes the lab's namespaces (their links and the bridge with
// them) and any veth left in this namespace by a failed addNode.
func (l *lab) close() {
	for i, ns := range l.nodes {
		_ = exec.Command("ip", "link", "del", l.link(i)).Run()
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", l.hub).Run()
}

// ipSteps runs ip with each argument list in turn.
func ipSteps(steps ...[]string) error {
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

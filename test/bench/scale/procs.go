package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/test/bench/host"
)

// daemon is a cistern-cache process of the benchmark's.
type daemon struct {
	cmd    *exec.Cmd
	client *api.Client
}

// startDaemon starts cistern-cache with its state under dir and the extra
// flags args, and waits until it answers.
func startDaemon(binDir, dir string, args ...string) (*daemon, error) {
	sock := filepath.Join(dir, "cache.sock")
	state := filepath.Join(dir, "state")
	cmd, err := start(filepath.Join(dir, "cistern-cache.log"), filepath.Join(binDir, "cistern-cache"), append([]string{"--socket=" + sock, "--state-dir=" + state,
		"--cache-tiers=disk:" + filepath.Join(state, "cache") + ":8Gi", "--grace=0s", "--max-inodes=0"}, args...)...)
	if err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, client: api.NewClient(sock)}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if d.client.Health(context.Background()) == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("cistern-cache did not answer on %s within 15s (log: %s)", sock, filepath.Join(dir, "cistern-cache.log"))
		}
	}
}

// stop ends the daemon (SIGTERM: it hands its mounts to the keeper, or
// unmounts them) and waits; a second stop does nothing.
func (d *daemon) stop() { stopProcess(d.cmd) }

// startKeeper starts a keeper (cistern keeper) with its socket in dir, as
// the chart runs one beside the daemon, and returns the flag that points
// a daemon at it.
func startKeeper(binDir, dir string) (*exec.Cmd, string, error) {
	sock := filepath.Join(dir, "keeper.sock")
	cmd, err := start(filepath.Join(dir, "cistern-keeper.log"), filepath.Join(binDir, "cistern"), "keeper", "--socket="+sock)
	if err != nil {
		return nil, "", err
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return cmd, "--keeper-socket=" + sock, nil
		}
		if time.Now().After(deadline) {
			stopProcess(cmd)
			return nil, "", fmt.Errorf("the keeper's socket %s did not appear within 15s", sock)
		}
	}
}

// start runs bin with args, its output appended to logPath.
func start(logPath, bin string, args ...string) (*exec.Cmd, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	return cmd, cmd.Start()
}

// stopProcess stops a process of the benchmark's (30 s to exit).
func stopProcess(cmd *exec.Cmd) { host.Stop(cmd, 30*time.Second) }

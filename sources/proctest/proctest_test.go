package proctest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartReportsExitWithLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "x.log")
	_, err := Start("/bin/sh", []string{"-c", "echo boom; exit 3"}, log, func() error { return errors.New("not yet") }, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v, want an exit error carrying the log", err)
	}
}

func TestStartTimesOutAndKills(t *testing.T) {
	log := filepath.Join(t.TempDir(), "x.log")
	_, err := Start("/bin/sh", []string{"-c", "sleep 30"}, log, func() error { return errors.New("never") }, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "was not ready within 50ms (never)") {
		t.Fatalf("got %v", err)
	}
}

func TestKillStopsAReadyProcess(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "up")
	p, err := Start("/bin/sh", []string{"-c", "touch " + marker + "; sleep 30"}, filepath.Join(dir, "x.log"), func() error {
		_, err := os.Stat(marker)
		return err
	}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Kill(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Kill did not return: the process is still running")
	}
}

func TestSlotRunsOneProcessAtATime(t *testing.T) {
	dir := t.TempDir()
	var slot Slot
	start := func() (*Process, error) {
		return Start("/bin/sh", []string{"-c", "sleep 30"}, filepath.Join(dir, "x.log"), func() error { return nil }, 5*time.Second)
	}
	if err := slot.Run(start); err != nil {
		t.Fatal(err)
	}
	if err := slot.Run(start); err == nil || err.Error() != "already running" {
		t.Fatalf("second Run: %v, want already running", err)
	}
	slot.Kill()
	slot.Kill() // killing an empty slot does nothing
	if err := slot.Run(start); err != nil {
		t.Fatalf("Run after Kill: %v", err)
	}
	slot.Kill()
}

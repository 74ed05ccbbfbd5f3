package config

import (
	"bytes"
	"context"
	"os"
	"time"
)

// Watch polls path every interval. When the content differs from the current
// config's, it calls apply with the new config if it is valid, or reject with
// the errors if not (the caller keeps the old config); the same error is
// reported once, not every interval.
// A change takes effect on the second poll that sees it. Polling the content, rather than
// watching inotify events, survives the symlink swap Kubernetes does when a
// ConfigMap volume changes. It returns when ctx ends.
func Watch(ctx context.Context, path string, interval time.Duration, current *Config, apply func(*Config), reject func(error)) {
	last := current.raw
	var pending []byte
	var lastErr string
	fail := func(err error) {
		if err.Error() != lastErr {
			lastErr = err.Error()
			reject(err)
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			fail(err)
			continue
		}
		if bytes.Equal(data, last) {
			pending = nil
			continue
		}
		// Apply only content seen unchanged on two polls in a row, so a file
		// caught half-written is never loaded.
		if !bytes.Equal(data, pending) {
			pending = data
			continue
		}
		last, pending = data, nil
		c, err := Parse(data, os.LookupEnv, os.ReadFile)
		if err != nil {
			fail(err)
			continue
		}
		lastErr = ""
		apply(c)
	}
}

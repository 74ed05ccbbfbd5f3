package memlimit

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// Headroom is the share of the container's memory limit left outside Go's
// soft limit: stacks, the binary and what the kernel counts against the
// cgroup beyond the Go heap.
const Headroom = 0.10

// cgroupFiles are where the container's memory limit can be read: cgroup
// v2's memory.max, then v1's memory.limit_in_bytes.
var cgroupFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// Choice is what From decided.
type Choice struct {
	// Limit is the soft limit to set in bytes; 0 leaves Go's default.
	Limit int64
	// Why says where it came from, or why none is set, for the log.
	Why string
}

// From chooses Go's soft memory limit: (1 − Headroom) × the container's
// memory limit, so that the collector works harder as the heap nears the
// limit instead of the container being OOM-killed, while GOGC still paces
// it below. GOMEMLIMIT in the environment wins, and no limit (cgroup "max",
// v1's near-2^63 "unlimited", no cgroup file) leaves Go's default.
func From(getenv func(string) string, readFile func(string) ([]byte, error)) (Choice, error) {
	if v := getenv("GOMEMLIMIT"); v != "" {
		return Choice{Why: fmt.Sprintf("GOMEMLIMIT = %q from the environment", v)}, nil
	}
	for _, path := range cgroupFiles {
		b, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Choice{}, fmt.Errorf("%s: %w", path, err)
		}
		raw := strings.TrimSpace(string(b))
		if raw == "max" {
			return Choice{Why: path + " = \"max\": no container memory limit"}, nil
		}
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n <= 0 {
			return Choice{}, fmt.Errorf("%s = %q: must be a positive number of bytes or max", path, raw)
		}
		// cgroup v1 says "unlimited" with a page-rounded 2^63−1.
		if n >= 1<<62 {
			return Choice{Why: fmt.Sprintf("%s = %q: no container memory limit", path, raw)}, nil
		}
		return Choice{
			Limit: int64(float64(n) * (1 - Headroom)),
			Why:   fmt.Sprintf("%s = %q: %.0f%% of it", path, raw, 100*(1-Headroom)),
		}, nil
	}
	return Choice{Why: "no cgroup memory limit file"}, nil
}

// Package memlimit sets Go's soft memory limit from the container's cgroup limit.
package memlimit

// Package secrets proves that no planted secret reaches flowscaler's logs, errors, traces or metrics.
package secrets

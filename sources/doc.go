// Package sources reads queue depth, message age and progress counters from brokers, and consumer metrics from Prometheus.
package sources

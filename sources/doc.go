// Package sources reads queue depth, message age and progress counters from brokers.
package sources

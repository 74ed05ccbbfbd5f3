// Package load drives a flowscaler daemon with many ScaledObjects polled as KEDA polls them, and measures it.
package load

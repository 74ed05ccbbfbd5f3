// Package sim replays a load trace against a model of a queue, its consumer pods, KEDA and the Kubernetes HPA, under flowscaler's policy and the usual baselines; it is pure: no I/O, no clock.
package sim

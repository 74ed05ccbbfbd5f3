// Package policy turns queue and consumer readings into one replica target; it is pure: no I/O, no clock.
package policy

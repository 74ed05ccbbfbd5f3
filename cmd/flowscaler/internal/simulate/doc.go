// Package simulate is the `flowscaler simulate` command: it replays a load trace under flowscaler and the baselines, then tabulates, reports and plots the outcome.
package simulate

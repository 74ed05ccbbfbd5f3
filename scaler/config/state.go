package config

import (
	"fmt"
	"strings"
)

// State backends of State.Backend.
const (
	StateMemory = "memory"
	StateRedis  = "redis"
)

// DefaultStateKeyPrefix starts every key of the redis state backend.
const DefaultStateKeyPrefix = "flowscaler/state/"

// State says where the policy state of each object (cooldown, scale-up
// base, rate samples, last good answer) is kept. memory keeps it in the
// process: one replica, lost on restart. redis keeps it in a redis
// connection so that replicas share it and a restart keeps it.
type State struct {
	Backend string `yaml:"backend"`
	// Connection names a connections entry of type redis; redis backend only.
	Connection string `yaml:"connection"`
	// KeyPrefix starts every key; "" means DefaultStateKeyPrefix. redis backend only.
	KeyPrefix string `yaml:"keyPrefix"`
}

func defaultState() State { return State{Backend: StateMemory} }

// Shared is true when replicas share the state.
func (s State) Shared() bool { return s.Backend == StateRedis }

// Prefix is the key prefix in force.
func (s State) Prefix() string {
	if s.KeyPrefix == "" {
		return DefaultStateKeyPrefix
	}
	return s.KeyPrefix
}

func (s State) validate(conns map[string]Connection) []error {
	var errs []error
	switch s.Backend {
	case StateMemory:
		if s.Connection != "" {
			errs = append(errs, fmt.Errorf("state.connection = %q: only the redis backend takes it", s.Connection))
		}
		if s.KeyPrefix != "" {
			errs = append(errs, fmt.Errorf("state.keyPrefix = %q: only the redis backend takes it", s.KeyPrefix))
		}
	case StateRedis:
		var redisConns []string
		for _, name := range sortedKeys(conns) {
			if conns[name].Type == "redis" {
				redisConns = append(redisConns, name)
			}
		}
		conn, ok := conns[s.Connection]
		switch {
		case s.Connection == "":
			errs = append(errs, fmt.Errorf("state.connection = \"\": must name a connection of type redis when state.backend is redis (configured: %s)", orNone(redisConns)))
		case !ok:
			errs = append(errs, fmt.Errorf("state.connection = %q: must name a configured connection of type redis (configured: %s)", s.Connection, orNone(redisConns)))
		case conn.Type != "redis":
			errs = append(errs, fmt.Errorf("state.connection = %q: must be a connection of type redis, not %s", s.Connection, conn.Type))
		}
		if strings.ContainsAny(s.KeyPrefix, " \t\r\n") {
			errs = append(errs, fmt.Errorf("state.keyPrefix = %q: must not contain spaces or line breaks", s.KeyPrefix))
		}
	default:
		errs = append(errs, fmt.Errorf("state.backend = %q: must be %s or %s", s.Backend, StateMemory, StateRedis))
	}
	return errs
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

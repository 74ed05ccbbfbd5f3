// Package config parses, validates and watches flowscaler.yaml.
package config

// Package explain is `flowscaler explain`: it asks a running flowscaler why it decided what it did, and prints the answer for people or as JSON.
package explain

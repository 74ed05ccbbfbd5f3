// Package chaos puts Toxiproxy between flowscaler and each real source and checks that no fault becomes a 0, an "inactive", a hang or a stale answer past staleAfter.
package chaos

// Package keda is flowscaler's conformance suite against KEDA's own client:
// the tests drive a real flowscaler process through
// github.com/kedacore/keda/v2/pkg/scalers (NewExternalScaler and
// NewExternalPushScaler), configured the way KEDA's operator configures them.
//
// It is a separate module because KEDA's dependency graph is large; the main
// module does not pay for it.
package keda

// Command flowscaler-load drives a flowscaler daemon with many ScaledObjects
// polled as KEDA polls them and reports latency, CPU, memory and reads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/flowscaler/flowscaler/cmd/flowscaler-load/internal/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := load.RunCLI(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "flowscaler-load:", err)
		}
		stop()
		os.Exit(1)
	}
}

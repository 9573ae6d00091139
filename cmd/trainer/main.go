// Command trainer connects to an aggregator, pulls training tasks while
// idle, trains each on its client's shard and returns the update. It
// reconnects with back-off when the connection drops and exits when the
// aggregator says the job is done or on SIGINT/SIGTERM.
//
//	trainer -aggregator HOST:PORT [-name NAME] [-token T] [-slowdown F]
package main

import (
	"os"

	"fedgather/internal/trainer"
)

func main() {
	os.Exit(trainer.Main(os.Args[1:], os.Stderr))
}

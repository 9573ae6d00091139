//go:build !unix

package main

import "time"

// cpuTime is not measured on this platform; samples_per_cpu_s_median is
// then reported as 0.
func cpuTime() time.Duration { return 0 }

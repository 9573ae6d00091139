//go:build !linux

package data

// physicalMemory returns 0 (unknown) where the platform has no simple query;
// memoryBudget then falls back to a fixed bound.
func physicalMemory() int64 { return 0 }

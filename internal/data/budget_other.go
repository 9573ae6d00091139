//go:build !linux

package data

// memoryLimits returns nothing where the platform has no simple query;
// memoryBudget then relies on GOMEMLIMIT or a fixed bound.
func memoryLimits() []int64 { return nil }

//go:build race

package wire

// raceEnabled reports a -race build, in which sync.Pool drops some of what
// is put back (so pooled state is made again) and allocation counts are
// not what a normal build makes.
const raceEnabled = true

//go:build race

package relaytest

// raceEnabled says whether the tests run with the race detector; the
// relay binary is then built with it too (RelayBinary).
const raceEnabled = true

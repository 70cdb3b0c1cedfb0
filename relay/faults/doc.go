// Package faults is the relay's fault-injection suite. It holds no library
// code, only tests: each scenario runs an application-style load (several
// writers, multi-row transactions, several topics and keys) against the
// relay binary while a fault happens — SIGKILL, a cut network to Kafka or
// Postgres, terminated Postgres backends, Kafka errors and delays, a broker
// restart, a second relay killed over and over — and then checks the
// relay's guarantees with one invariant checker that reads the outbox
// tables and consumes every topic from the beginning.
//
// Run it with
//
//	go test -race -count=1 ./relay/faults/
//
// Each scenario's load and fault loop lasts a few seconds by default. Set
// RELAY_SOAK to a duration to make every scenario run that long, e.g.
//
//	RELAY_SOAK=10m go test -count=1 -run . ./relay/faults/ -timeout 60m
//
// See docs/reliability.md for what each scenario injects and checks.
package faults

// Package e2e runs whole clusters of real imd processes on real ZooKeeper,
// Redis and MongoDB (FerretDB) servers started on loopback, and checks the
// delivery guarantees from the outside, through the client library. It has
// tests only.
package e2e

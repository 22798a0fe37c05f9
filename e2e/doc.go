// Package e2e runs whole clusters of real imd processes on real ZooKeeper,
// Redis and MongoDB (FerretDB) servers started on loopback, and checks the
// delivery guarantees from the outside, through the client library. It has
// tests only. With E2E_LOG_DIR set, the nodes' logs are kept in
// $E2E_LOG_DIR/<test name>/ (otherwise a failed test prints their tails);
// IMGN_DEVMONGO names another dev MongoDB binary (a wrapper that adds
// devmongo --pprof, for one).
package e2e

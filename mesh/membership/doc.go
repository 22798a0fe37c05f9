// Package membership is who is in the cluster: the Registry seam through
// which a node publishes itself (NodeInfo) and every node and router
// watches the live members, an in-memory implementation for tests and
// single-process setups (MemoryHub), and the view feed both use. The
// ZooKeeper implementation is mesh/zkregistry; every implementation passes
// mesh/registrytest. Routers depend on this package only, never on the
// forwarding code or the engine.
package membership

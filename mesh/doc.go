// Package mesh is node-to-node forwarding: it implements cluster.Cluster
// for the engine. A Cluster keeps the ownership ring (lb's consistent hash
// over the live members that package membership reports) and carries
// appends, pushes and kicks to peers over a Transport: direct TCP links
// between every pair of nodes (Links, this package) or Redis pub/sub
// (package mesh/redislink). Both transports pass one conformance suite
// (mesh/transporttest), and both hand what peers send to one dispatcher,
// Inbound, which decodes the requests and runs them on the
// cluster.Handler. The wire messages are in mesh/meshpb; the frame
// is codec's, in the command range 0xC0-0xFF.
//
// docs/cluster.md describes ownership, forwarding and failure handling.
package mesh

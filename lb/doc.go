// Package lb chooses a server node for a client: the load-balancing
// strategies of the router and the consistent-hash ring that also decides
// which node owns each user's inbox.
//
// The package is pure code with no dependency on the rest of the project.
// Everything in it is safe for concurrent use, and picking a node does not
// allocate.
//
// # Rules shared by every strategy
//
//   - A [Node] with Weight 0 or Draining set takes no new work: it is
//     accepted in a node set but never picked.
//   - When no node can be picked (an empty set, every node draining or at
//     weight 0, or every eligible node excluded) Pick returns
//     [ErrNoAvailableNode]. Nothing panics; the original Java design's crash on all-zero
//     weights (nextInt(0)) cannot happen.
//   - Node sets are validated: an empty ID ([ErrEmptyID]), a repeated ID
//     ([ErrDuplicateID]), a weight below 0 ([ErrNegativeWeight]) or above
//     [MaxWeight] ([ErrWeightTooLarge]) and a negative Active count
//     ([ErrNegativeActive]) are errors, and a failed Update keeps the
//     previous set.
//   - Pick takes an exclude list of node IDs, for a client failing over
//     from a node it could not reach.
//   - Results never depend on the order in which nodes are listed.
//   - [DefaultWeight] (100) is a normal node's weight.
//
// # Strategies
//
// [New] returns a [Balancer] by name:
//
//   - "consistent-hash" ([ConsistentHash]): the key (the user ID) is placed
//     on a [Ring] of virtual nodes, [DefaultVirtualNodes] per node of
//     DefaultWeight, scaled by weight. A user keeps reaching the same node
//     while membership is stable, and a membership change moves only the
//     users of the nodes that joined or left. Lookup is a hash (XXH64)
//     plus a binary search narrowed by a bucket index: O(1) expected, no
//     lock, no allocation. With exclude it walks clockwise to the next
//     eligible node. The ring is rebuilt only when the eligible IDs or
//     their weights change, and published with one atomic pointer store.
//   - "least-active" ([LeastActive]): the node with the fewest active
//     connections per unit of weight; ties are broken uniformly at random.
//     Active counts come from Update; each Pick also counts one connection
//     on the node it returns until the next Update, so a burst of picks
//     between two registry refreshes spreads out instead of piling onto
//     one node. O(N), lock-free.
//   - "weighted-random" ([WeightedRandom]): a node with probability
//     weight/total, by binary search over prefix sums. O(log N),
//     lock-free.
//   - "round-robin" ([RoundRobin]): nginx's smooth weighted round robin.
//     Over any sum(weights) consecutive picks each node is picked exactly
//     weight times, evenly spread. O(N) under a mutex.
//
// # Cross-process agreement
//
// The router (through the consistent-hash Balancer) and the cluster
// (through [NewRing]) must name the same owner for a user. They do when
// both see the same eligible nodes (IDs and weights) and use the same
// virtual-node count: positions come from XXH64, a fixed, published hash
// ([Hash64]), never from a per-process seed like hash/maphash's.
package lb

package lb_test

import (
	"errors"
	"fmt"

	"github.com/imgn/imgn/lb"
)

func Example() {
	b, err := lb.New(lb.ConsistentHash)
	if err != nil {
		panic(err)
	}
	err = b.Update([]lb.Node{
		{ID: "node-a", Addr: "10.0.0.1:7000", Weight: lb.DefaultWeight},
		{ID: "node-b", Addr: "10.0.0.2:7000", Weight: lb.DefaultWeight},
		{ID: "node-c", Addr: "10.0.0.3:7000", Weight: lb.DefaultWeight, Draining: true},
	})
	if err != nil {
		panic(err)
	}
	n, err := b.Pick("alice")
	fmt.Println(n.ID, n.Addr, err)
	// The client could not reach node-b: ask again, excluding it.
	n, err = b.Pick("alice", n.ID)
	fmt.Println(n.ID, err)
	// Nothing left.
	_, err = b.Pick("alice", "node-a", "node-b")
	fmt.Println(errors.Is(err, lb.ErrNoAvailableNode))
	// Output:
	// node-b 10.0.0.2:7000 <nil>
	// node-a <nil>
	// true
}

func ExampleRing() {
	// Every process that builds a ring from the same members and virtual
	// node count names the same owner for a user.
	members := []lb.Node{
		{ID: "node-a", Weight: lb.DefaultWeight},
		{ID: "node-b", Weight: lb.DefaultWeight},
		{ID: "node-c", Weight: lb.DefaultWeight},
	}
	ring, err := lb.NewRing(members, lb.DefaultVirtualNodes)
	if err != nil {
		panic(err)
	}
	owner, ok := ring.Owner("bob")
	fmt.Println(owner, ok)
	// Output: node-b true
}

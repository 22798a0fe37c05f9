package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/imgn/imgn/client"
	"github.com/imgn/imgn/client/clienttest"
)

func Example() {
	srv, err := clienttest.New() // an in-memory stand-in for imd
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	for _, u := range []string{"alice", "bob"} {
		if _, err := client.Register(ctx, client.Config{Addr: srv.Addr, User: u, Password: "secret123"}); err != nil {
			panic(err)
		}
	}
	alice, err := client.Dial(ctx, client.Config{Addr: srv.Addr, User: "alice", Password: "secret123", SendOnly: true})
	if err != nil {
		panic(err)
	}
	defer alice.Close()
	bob, err := client.Dial(ctx, client.Config{Addr: srv.Addr, User: "bob", Password: "secret123", Device: "phone"})
	if err != nil {
		panic(err)
	}
	defer bob.Close()

	ack, err := alice.Send(ctx, "bob", []byte("hello bob"))
	if err != nil {
		panic(err)
	}
	fmt.Println("stored in alice's inbox at seq", ack.GetSeq())
	m := <-bob.Messages()
	fmt.Printf("bob got seq %d from %s: %s\n", m.GetSeq(), m.GetFrom(), m.GetBody())
	// Output:
	// stored in alice's inbox at seq 1
	// bob got seq 1 from alice: hello bob
}

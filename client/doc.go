// Package client is the Go client library of the IMGN protocol
// (docs/protocol.md): it logs in, keeps the connection alive, reconnects,
// and turns best-effort pushes plus sync into an exactly-once, in-order
// message stream.
//
//	c, err := client.Dial(ctx, client.Config{Addr: "127.0.0.1:9090", User: "alice", Password: "secret123", Device: "laptop"})
//	if err != nil { ... }
//	defer c.Close()
//	go func() {
//		for m := range c.Messages() { // closed when the Client stops
//			fmt.Printf("%d %s: %s\n", m.Seq, m.From, m.Body)
//		}
//	}()
//	ack, err := c.Send(ctx, "bob", []byte("hi"))
//
// # WebSocket
//
// An address written "ws://host:port/" (Config.Addr, or what a Resolver
// returns) connects to the node's WebSocket listener (imd --ws-listen)
// instead of its TCP one, with the same protocol and guarantees
// (docs/protocol.md §10): every frame the client writes goes out as one
// masked binary message, the payloads of the node's binary messages are
// read as one frame stream, pings are answered. A text message, a frame
// that breaks RFC 6455, or a close frame other than normal closure or
// going away ends the connection with an error matching ErrWebSocket; like
// any lost connection it is then redialed. wss:// is not supported (the
// client has no TLS settings): put the node's plain WebSocket listener, or
// its raw TCP one, within reach.
//
// # Guarantees
//
//   - Receiving: Messages delivers every entry of the user's inbox after
//     the starting position exactly once, in ascending seq order, with no
//     gaps — across pushes lost or reordered by the server, reconnects and
//     node changes. Pushes are ordered and deduplicated; a gap not filled
//     within Config.GapGrace is filled by SYNC; every (re)connect syncs
//     from the last delivered seq. Delivered positions are acknowledged to
//     the server (PUSH_ACK, coalesced) so the next login of the same Device
//     resumes after them.
//   - Sending: Send and SendGroup return only after the server made the
//     message durable. They retry retryable errors, timeouts and lost
//     connections with the same client_msg_id, so a message is stored at
//     most once and, while the caller keeps waiting, exactly once.
//   - Connection: heartbeats at the interval the server asks for; a
//     connection that stops answering is replaced. A lost connection is
//     redialed with capped exponential backoff and full jitter; GO_AWAY is
//     honoured (wait, then reconnect avoiding that node). A KICK (another
//     login of the same user and device, or an operator) stops the Client
//     for good: it never reconnects by itself, and Err reports an *Error
//     that matches ErrKicked.
//
// # Errors
//
// Server failures are *Error values carrying the protocol code (compare
// with errors.Is(err, &client.Error{Code: codec.CodeUserExists}) or
// errors.As). Sentinels: ErrClosed, ErrKicked, ErrConnectionLost,
// ErrTimeout, ErrProtocol, ErrWebSocket.
//
// # Concurrency
//
// A Client is safe for concurrent use. It owns its goroutines (a connection
// supervisor, a delivery goroutine, and per connection a reader and a
// heartbeat), every queue is bounded, and Close stops and waits for all of
// them.
package client

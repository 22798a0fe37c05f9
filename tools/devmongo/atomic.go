package main

// Document-level atomicity for FerretDB v1.
//
// MongoDB applies each update to one document atomically: two concurrent
// {$max: {read: n}} upserts on one document both take effect, and a
// filter that checks a version field sees the version the update
// replaces. FerretDB v1 does not: it reads the matching documents, applies
// the update in Go and writes each document back whole, with nothing that
// stops another writer in between, so of two concurrent updates of one
// document the first one written back is lost (the project's stores rely
// on $max updates never moving a cursor back, and on version checks; an
// update of one field also rewrites the fields another writer just
// changed).
//
// devmongo therefore puts FerretDB behind its own listener: clients
// connect to the --listen address, each connection is relayed to FerretDB
// over a Unix socket, and the write commands (update, findAndModify,
// delete) run under locks that give MongoDB's guarantee:
//
//   - a statement whose filter names one document by a top-level _id
//     equality (a scalar _id, whatever else the filter tests) locks that
//     document: writes of different documents of a collection still run
//     in parallel;
//   - any other filter locks the whole collection.
//
// Inserts, reads and every other command are relayed without a lock (an
// insert is atomic in the backend, and its unique indexes settle races
// with upserts as in MongoDB). A relayed connection carries one request at
// a time (the MongoDB drivers never pipeline on a connection, except
// exhaust cursors, whose replies are relayed until the last), so a lock is
// held from the request to its reply.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
)

// Wire protocol constants (MongoDB wire protocol, OP_MSG).
const (
	headerLen      = 16
	opMsg          = 2013
	flagChecksum   = 1 << 0
	flagMoreToCome = 1 << 1
	// maxMessage bounds a relayed message: MongoDB's own limit is 48 MB.
	maxMessage = 48 << 20
	// docStripes is the number of document locks; documents that hash to
	// one stripe share it, which only serialises writes that could have
	// run in parallel.
	docStripes = 1024
)

// lockTable holds the collection and document locks. Lock order, so that
// no two writers deadlock: the collection lock (shared for document
// writes, exclusive for the rest), then document stripes in ascending
// order. A command writes one collection.
type lockTable struct {
	seed    maphash.Seed
	mu      sync.Mutex
	colls   map[string]*sync.RWMutex
	stripes [docStripes]sync.Mutex
}

func newLockTable() *lockTable {
	return &lockTable{seed: maphash.MakeSeed(), colls: map[string]*sync.RWMutex{}}
}

func (t *lockTable) coll(ns string) *sync.RWMutex {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.colls[ns]
	if l == nil {
		l = &sync.RWMutex{}
		t.colls[ns] = l
	}
	return l
}

// writeLock is what one write command holds. The zero value holds nothing.
type writeLock struct {
	coll    *sync.RWMutex
	whole   bool
	stripes []int
	t       *lockTable
}

// acquire takes the locks of a write to namespace ns whose statements'
// filters pinned the documents ids (raw BSON _id values); whole asks for
// the collection.
func (t *lockTable) acquire(ns string, ids [][]byte, whole bool) writeLock {
	l := writeLock{coll: t.coll(ns), whole: whole, t: t}
	if whole {
		l.coll.Lock()
		return l
	}
	l.coll.RLock()
	for _, id := range ids {
		var h maphash.Hash
		h.SetSeed(t.seed)
		h.WriteString(ns)
		h.WriteByte(0)
		h.Write(id)
		l.stripes = append(l.stripes, int(h.Sum64()%docStripes))
	}
	slices.Sort(l.stripes)
	l.stripes = slices.Compact(l.stripes)
	for _, s := range l.stripes {
		t.stripes[s].Lock()
	}
	return l
}

func (l writeLock) release() {
	if l.coll == nil {
		return
	}
	if l.whole {
		l.coll.Unlock()
		return
	}
	for _, s := range slices.Backward(l.stripes) {
		l.t.stripes[s].Unlock()
	}
	l.coll.RUnlock()
}

// writeTarget says which locks an OP_MSG body needs: ok is false for a
// message that is not a write command (relayed without a lock). msg is
// the whole message, header included.
func writeTarget(msg []byte) (ns string, ids [][]byte, whole, ok bool) {
	if len(msg) < headerLen+5 || binary.LittleEndian.Uint32(msg[12:]) != opMsg {
		return "", nil, false, false
	}
	flags := binary.LittleEndian.Uint32(msg[headerLen:])
	end := len(msg)
	if flags&flagChecksum != 0 {
		end -= 4
	}
	var body bsoncore.Document
	var seqs = map[string][]bsoncore.Document{}
	for p := headerLen + 4; p < end; {
		kind := msg[p]
		p++
		switch kind {
		case 0:
			n, ok := docLen(msg[p:end])
			if !ok {
				return "", nil, false, false
			}
			body = bsoncore.Document(msg[p : p+n])
			p += n
		case 1:
			if p+4 > end {
				return "", nil, false, false
			}
			size := int(binary.LittleEndian.Uint32(msg[p:]))
			if size < 5 || p+size > end {
				return "", nil, false, false
			}
			sec := msg[p+4 : p+size]
			p += size
			i := slices.Index(sec, 0)
			if i < 0 {
				return "", nil, false, false
			}
			id := string(sec[:i])
			for rest := sec[i+1:]; len(rest) > 0; {
				n, ok := docLen(rest)
				if !ok {
					return "", nil, false, false
				}
				seqs[id] = append(seqs[id], bsoncore.Document(rest[:n]))
				rest = rest[n:]
			}
		default:
			return "", nil, false, false
		}
	}
	if body == nil {
		return "", nil, false, false
	}
	first, err := body.IndexErr(0)
	if err != nil {
		return "", nil, false, false
	}
	coll, isStr := first.Value().StringValueOK()
	if !isStr {
		return "", nil, false, false
	}
	db, _ := body.Lookup("$db").StringValueOK()
	ns = db + "." + coll
	// filters lists the statements' filters: each a document, or nil
	// where one is missing or malformed (locking the collection).
	var filters []bsoncore.Document
	statements := func(field, filterKey string) {
		for _, st := range seqs[field] {
			filters = append(filters, lookupDoc(st, filterKey))
		}
		if arr, ok := body.Lookup(field).ArrayOK(); ok {
			vals, _ := arr.Values()
			for _, v := range vals {
				st, _ := v.DocumentOK()
				filters = append(filters, lookupDoc(st, filterKey))
			}
		}
	}
	switch strings.ToLower(first.Key()) {
	case "update":
		statements("updates", "q")
	case "delete":
		statements("deletes", "q")
	case "findandmodify":
		filters = append(filters, lookupDoc(body, "query"))
	default:
		return "", nil, false, false
	}
	for _, f := range filters {
		id, pinned := pinnedID(f)
		if !pinned {
			return ns, nil, true, true
		}
		ids = append(ids, id)
	}
	return ns, ids, false, true
}

// docLen is the length of the BSON document at the start of b.
func docLen(b []byte) (int, bool) {
	if len(b) < 5 {
		return 0, false
	}
	n := int(int32(binary.LittleEndian.Uint32(b)))
	return n, n >= 5 && n <= len(b)
}

// lookupDoc returns d[key] when it is a document, else nil.
func lookupDoc(d bsoncore.Document, key string) bsoncore.Document {
	if d == nil {
		return nil
	}
	v, err := d.LookupErr(key)
	if err != nil {
		return nil
	}
	doc, _ := v.DocumentOK()
	return doc
}

// pinnedID returns the lock key of a filter that can match at most one
// document: a top-level _id that is not a document or an array (those may
// be operators: {_id: {$in: ...}}). The key is the value's type and bytes,
// except for numbers, which match across types ({_id: 5} finds the
// document whose _id is 5.0): an integral one is keyed by its int64 value
// whatever its type.
func pinnedID(filter bsoncore.Document) ([]byte, bool) {
	if filter == nil {
		return nil, false
	}
	v, err := filter.LookupErr("_id")
	if err != nil {
		return nil, false
	}
	switch v.Type {
	case bson.TypeEmbeddedDocument, bson.TypeArray:
		return nil, false
	case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
		if n, ok := v.AsInt64OK(); ok && (v.Type != bson.TypeDouble || float64(n) == v.Double()) {
			return binary.LittleEndian.AppendUint64([]byte{'n'}, uint64(n)), true
		}
	}
	return append([]byte{byte(v.Type)}, v.Data...), true
}

// relay accepts clients on ln and relays each connection to the backend
// dialled by dial, under the locks of its write commands, until ctx ends;
// then it closes ln and every connection and returns once its goroutines
// have.
func relay(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error), log *slog.Logger) {
	locks := newLockTable()
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if !add {
			delete(conns, c)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				log.Warn("devmongo: accept", "err", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			break
		}
		if !track(c, true) {
			c.Close()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer track(c, false)
			defer c.Close()
			b, err := dial(ctx)
			if err != nil {
				log.Warn("devmongo: backend unreachable", "err", err)
				return
			}
			if !track(b, true) {
				b.Close()
				return
			}
			defer track(b, false)
			defer b.Close()
			err = relayConn(c, b, locks)
			if ctx.Err() == nil {
				log.Debug("devmongo: connection ended", "err", err)
			}
		}()
	}
	wg.Wait()
}

// relayConn relays one client connection until either side closes; it
// returns why (io.EOF when the client hung up).
func relayConn(client, backend net.Conn, locks *lockTable) error {
	cr, br := bufio.NewReader(client), bufio.NewReader(backend)
	var req, rep []byte
	for {
		var err error
		if req, err = readMessage(cr, req); err != nil {
			return err
		}
		var l writeLock
		if ns, ids, whole, ok := writeTarget(req); ok {
			l = locks.acquire(ns, ids, whole)
		}
		rep, err = relayRequest(req, rep, client, backend, br)
		l.release()
		if err != nil {
			return err
		}
	}
}

// relayRequest sends req to the backend and copies its replies back: none
// when the request says more is to come, else until a reply that does
// not (an exhaust cursor streams several).
// rep is a buffer to reuse; the grown one is returned.
func relayRequest(req, rep []byte, client, backend net.Conn, br *bufio.Reader) ([]byte, error) {
	if _, err := backend.Write(req); err != nil {
		return rep, fmt.Errorf("to backend: %w", err)
	}
	if moreToCome(req) {
		return rep, nil
	}
	for {
		var err error
		if rep, err = readMessage(br, rep); err != nil {
			return rep, fmt.Errorf("from backend: %w", err)
		}
		if _, err := client.Write(rep); err != nil {
			return rep, fmt.Errorf("to client: %w", err)
		}
		if !moreToCome(rep) {
			return rep, nil
		}
	}
}

func moreToCome(msg []byte) bool {
	return binary.LittleEndian.Uint32(msg[12:]) == opMsg && len(msg) >= headerLen+4 &&
		binary.LittleEndian.Uint32(msg[headerLen:])&flagMoreToCome != 0
}

// readMessage reads one wire message into buf (grown as needed) and
// returns it, header included.
func readMessage(r *bufio.Reader, buf []byte) ([]byte, error) {
	buf = slices.Grow(buf[:0], headerLen)[:headerLen]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	n := int(int32(binary.LittleEndian.Uint32(buf)))
	if n < headerLen || n > maxMessage {
		return nil, fmt.Errorf("message length %d out of range", n)
	}
	buf = slices.Grow(buf, n-headerLen)[:n]
	if _, err := io.ReadFull(r, buf[headerLen:]); err != nil {
		return nil, err
	}
	return buf, nil
}

package webhook

import (
	"strings"
	"sync"
)

// recentPerGeneration bounds each of recentSet's two generations.
const recentPerGeneration = 1 << 16

// recentSet remembers the (message, recipient) pairs queued lately, so that
// a message reported again (a client's retry) is not posted twice. It keeps
// two generations and drops the older when the newer fills, so it holds
// between recentPerGeneration and twice that many pairs. Safe for
// concurrent use; add holds the lock for two map operations.
type recentSet struct {
	mu       sync.Mutex
	cur, old map[recentKey]struct{}
}

type recentKey struct {
	msgID uint64
	user  string
}

// add records (msgID, user) and reports whether it was new.
func (r *recentSet) add(msgID uint64, user string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := recentKey{msgID, user}
	if _, ok := r.cur[k]; ok {
		return false
	}
	if _, ok := r.old[k]; ok {
		return false
	}
	if r.cur == nil || len(r.cur) >= recentPerGeneration {
		r.old, r.cur = r.cur, make(map[recentKey]struct{}, 1024)
	}
	k.user = strings.Clone(user) // user may point into reused memory
	r.cur[k] = struct{}{}
	return true
}

package engine

import (
	"sync"

	"github.com/imgn/imgn/persist"
)

// groupCacheSize bounds the groups whose membership is cached.
const groupCacheSize = 10000

// groupCache keeps group membership so that a GROUP_SEND does not read
// (and copy) the member list from the store each time. It is used only on
// a single node, where this engine makes every membership change: each
// change forgets the group, and a generation number keeps a read that
// started before the change from caching what it read. Safe for concurrent
// use. Cached groups are shared and must not be modified.
type groupCache struct {
	mu  sync.RWMutex
	m   map[string]*persist.Group
	gen uint64
}

func (gc *groupCache) init() { gc.m = make(map[string]*persist.Group) }

// get returns the cached group, or nil, and the generation to pass to put
// after reading it from the store.
func (gc *groupCache) get(id string) (*persist.Group, uint64) {
	gc.mu.RLock()
	g, gen := gc.m[id], gc.gen
	gc.mu.RUnlock()
	return g, gen
}

// put caches g unless a membership change happened since get returned gen.
// When the cache is full an arbitrary entry makes room.
func (gc *groupCache) put(g *persist.Group, gen uint64) {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	if gc.gen != gen {
		return
	}
	if len(gc.m) >= groupCacheSize {
		for k := range gc.m {
			delete(gc.m, k)
			break
		}
	}
	gc.m[g.ID] = g
}

// forget drops id after its membership changed (or may have).
func (gc *groupCache) forget(id string) {
	gc.mu.Lock()
	delete(gc.m, id)
	gc.gen++
	gc.mu.Unlock()
}

package codec

import (
	"encoding/json"
	"fmt"
)

// KindGroupEvent is the kind of a group membership event: a system message
// (from "") in a group whose body is a GroupEvent in JSON, whatever the
// connection's serializer (docs/protocol.md §6.7). Only the server sends
// system messages in groups, so the kind cannot clash with an
// application's.
const KindGroupEvent uint32 = 2

// Group event types (GroupEvent.Type).
const (
	GroupEventAdded        = "members_added"   // Users joined or were added
	GroupEventRemoved      = "members_removed" // Users left (By is the user) or were removed
	GroupEventOwnerChanged = "owner_changed"   // Users[0] is the new owner
	GroupEventAdminAdded   = "admin_added"     // Users[0] became an admin
	GroupEventAdminRemoved = "admin_removed"   // Users[0] is no longer an admin
)

// GroupEvent is the body of a group membership event.
type GroupEvent struct {
	Type  string   `json:"type"`
	Users []string `json:"users"`
	// By is who made the change: the user itself for a join or a leave,
	// "" for an operator or a change that followed from another (an owner
	// who left handing on ownership).
	By string `json:"by,omitempty"`
}

// ParseGroupEvent decodes the body of a message of kind KindGroupEvent.
func ParseGroupEvent(body []byte) (GroupEvent, error) {
	var e GroupEvent
	if err := json.Unmarshal(body, &e); err != nil {
		return GroupEvent{}, fmt.Errorf("codec: group event: %w", err)
	}
	if e.Type == "" {
		return GroupEvent{}, fmt.Errorf("codec: group event without a type")
	}
	return e, nil
}

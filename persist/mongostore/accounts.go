package mongostore

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/imgn/imgn/persist"
)

var _ persist.UserUpdater = (*Store)(nil)

// UpdateUser implements persist.UserUpdater with one single-document
// update of the account's hash.
func (s *Store) UpdateUser(ctx context.Context, u persist.User) error {
	if err := persist.CheckID("user id", u.ID); err != nil {
		return fmt.Errorf("mongostore: update user: %w", err)
	}
	leave, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	res, err := s.users.UpdateOne(ctx, bson.D{{Key: "_id", Value: enc(u.ID)}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "pw", Value: enc(u.PasswordHash)}}}})
	if err != nil {
		return mapErr(ctx, "update user", err)
	}
	if res.MatchedCount == 0 {
		return persist.ErrNotFound
	}
	return nil
}

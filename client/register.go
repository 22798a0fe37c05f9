package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/imgn/imgn/codec"
	"github.com/imgn/imgn/codec/pb"
	"google.golang.org/protobuf/proto"
)

// Register creates the account cfg.User with cfg.Password on a one-shot
// connection (cfg.Addr or cfg.Resolver, cfg.Serializer, cfg.DialTimeout,
// cfg.RequestTimeout apply; the rest is ignored) and closes it. It does not
// log in: Dial afterwards.
//
// It makes one attempt and does not retry. Errors: *Error USER_EXISTS,
// INVALID_ARGUMENT (user id or password rules), or a retryable *Error (a
// retry with the same arguments is then safe); network errors wrapped.
func Register(ctx context.Context, cfg Config) (*pb.RegisterOK, error) {
	cfg, err := cfg.withDefaults(false)
	if err != nil {
		return nil, err
	}
	if cfg.User == "" || cfg.Password == "" {
		return nil, errors.New("client: register: User and Password are required")
	}
	addr, nodeID, err := cfg.Resolver(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("client: register: resolve: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	nc, err := dialNode(dctx, &cfg, addr)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("client: register: dial %s: %w", addr, err)
	}
	cn := newConn(nc, &cfg, noEvents{}, addr, nodeID)
	defer cn.shutdown(errors.New("register done"))
	resp, err := cn.roundTrip(ctx, codec.CmdRegister, 0, 1, &pb.RegisterRequest{User: cfg.User, Password: cfg.Password},
		codec.CmdRegisterOK, func() proto.Message { return new(pb.RegisterOK) })
	if err != nil {
		return nil, fmt.Errorf("client: register %s: %w", cfg.User, err)
	}
	return resp.(*pb.RegisterOK), nil
}

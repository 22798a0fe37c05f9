// @imgn/client: the imgn IM protocol (docs/protocol.md) over WebSocket, for
// browsers and Node 20.

export { Client, convKey, convOf, newClientMsgId } from "./client.js";
export type { ClientEvents, ClientOptions, Conv, Outbox, OutboxEntry, Route, RouterOptions, SendState, State } from "./client.js";
export { Code, ClientClosed, ConnectionLost, ImgnError, codeName } from "./errors.js";
export { Cmd, FrameReader, FrameError, Serializer, encodeFrame, HEADER_LEN } from "./frame.js";
export type { Frame } from "./frame.js";
export { decodeBody, encodeBody, parseLossless, toWireJson } from "./codec.js";
export { Inbox } from "./inbox.js";
export { KIND_GROUP_EVENT, groupEventOf } from "./groupevent.js";
export type { GroupEvent, GroupEventType } from "./groupevent.js";
export type { WebSocketConstructor, WebSocketLike } from "./socket.js";
export * as pb from "./gen/imgn_pb.js";

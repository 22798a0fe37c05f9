// Membership events (protocol.md §4.5): the server announces every change
// of a group's members or roles in the group's own timeline, as a system
// message (from "", group_id set, kind 2) whose body is JSON in every
// serializer.

import type { Message } from "./gen/imgn_pb.js";

/** The kind of a membership event. The server alone sends system messages in groups, so it cannot clash with an application's kind. */
export const KIND_GROUP_EVENT = 2;

/** What a membership event announces; other strings may come from a newer server. */
export type GroupEventType = "members_added" | "members_removed" | "owner_changed" | "admin_added" | "admin_removed";

/** GroupEvent is a parsed membership event, with where it sits in the inbox. */
export interface GroupEvent {
  groupId: string;
  type: GroupEventType | (string & {});
  /** Who was added or removed; for owner_changed the new owner, for admin_* the member whose role changed. */
  users: string[];
  /**
   * Who made the change: the user itself for a join or a leave; "" for an
   * operator, and for the hand-off that follows an owner's leaving.
   */
  by: string;
  seq: bigint;
  msgId: bigint;
  time: bigint;
  /** The inbox entry the event came in. */
  message: Message;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * groupEventOf returns the membership event m carries, or undefined when m
 * is no membership event (an application message, a recall or delete
 * event) or its body does not parse: such an entry is left to the message
 * stream, which shows every entry whatever it is.
 */
export function groupEventOf(m: Message): GroupEvent | undefined {
  if (!m.groupId || m.from !== "" || m.kind !== KIND_GROUP_EVENT || m.event !== 0) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(utf8.decode(m.body));
  } catch {
    return undefined;
  }
  if (typeof v !== "object" || v === null) return undefined;
  const o = v as { type?: unknown; users?: unknown; by?: unknown };
  if (typeof o.type !== "string" || !o.type) return undefined;
  const users = o.users ?? [];
  if (!Array.isArray(users) || !users.every((u) => typeof u === "string")) return undefined;
  if (o.by !== undefined && typeof o.by !== "string") return undefined;
  return { groupId: m.groupId, type: o.type, users: users as string[], by: (o.by as string | undefined) ?? "",
    seq: m.seq, msgId: m.msgId, time: m.time, message: m };
}

// Body encoding (protocol.md §3): Protobuf through the code generated from
// codec/pb/imgn.proto, and the protocol's own JSON mapping, which is not
// proto3's canonical one: keys are the proto field names (snake_case) and
// 64-bit integers are bare numbers, read here without losing precision.

import { create, fromBinary, fromJson, toBinary, ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage, JsonValue, MessageShape } from "@bufbuild/protobuf";
import { base64Encode } from "@bufbuild/protobuf/wire";
import { Serializer } from "./frame.js";

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** encodeBody serializes msg of schema desc with serializer (1 JSON, 2 Protobuf). */
export function encodeBody<Desc extends DescMessage>(serializer: number, desc: Desc, msg: MessageShape<Desc>): Uint8Array {
  if (serializer === Serializer.Protobuf) return toBinary(desc, msg);
  return utf8.encode(toWireJson(desc, msg as unknown as Record<string, unknown>));
}

/** decodeBody parses a body of schema desc; unknown fields and keys are ignored (protocol.md §3). */
export function decodeBody<Desc extends DescMessage>(serializer: number, desc: Desc, body: Uint8Array): MessageShape<Desc> {
  if (body.length === 0) return create(desc);
  if (serializer === Serializer.Protobuf) return fromBinary(desc, body);
  if (serializer !== Serializer.JSON) throw new Error(`serializer ${serializer} is not supported by this client`);
  const json = parseLossless(utf8Decoder.decode(body));
  return fromJson(desc, json, { ignoreUnknownFields: true });
}

/** toWireJson writes msg as the protocol's JSON: proto field names, 64-bit integers as numbers, defaults left out. */
export function toWireJson(desc: DescMessage, msg: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const f of desc.fields) {
    const v = msg[f.localName];
    const s = fieldJson(f, v);
    if (s !== undefined) parts.push(JSON.stringify(f.name) + ":" + s);
  }
  return "{" + parts.join(",") + "}";
}

function fieldJson(f: DescField, v: unknown): string | undefined {
  switch (f.fieldKind) {
    case "scalar":
      return scalarJson(f.scalar, v, true);
    case "enum":
      return v ? String(v) : undefined;
    case "message":
      return v === undefined ? undefined : toWireJson(f.message, v as Record<string, unknown>);
    case "list": {
      const list = v as unknown[];
      if (!list || list.length === 0) return undefined;
      const items = list.map((x) =>
        f.listKind === "message" ? toWireJson(f.message, x as Record<string, unknown>)
          : f.listKind === "scalar" ? scalarJson(f.scalar, x, false)! : String(x));
      return "[" + items.join(",") + "]";
    }
    default:
      throw new Error(`field ${f.name}: maps are not part of the protocol`);
  }
}

function scalarJson(t: ScalarType, v: unknown, omitDefault: boolean): string | undefined {
  switch (t) {
    case ScalarType.STRING:
      return omitDefault && !v ? undefined : JSON.stringify(v ?? "");
    case ScalarType.BOOL:
      return omitDefault && !v ? undefined : v ? "true" : "false";
    case ScalarType.BYTES: {
      const b = (v as Uint8Array | undefined) ?? new Uint8Array(0);
      return omitDefault && b.length === 0 ? undefined : JSON.stringify(base64Encode(b, "std"));
    }
    default: {
      // every integer kind, 64-bit ones (bigint) included: a bare number
      const s = String(v ?? 0);
      return omitDefault && (s === "0") ? undefined : s;
    }
  }
}

/**
 * parseLossless is JSON.parse, except that integers beyond 2^53 are kept
 * as their decimal text (a string), which fromJson accepts for 64-bit
 * fields: msg_id values use the high bits (protocol.md §3).
 */
export function parseLossless(text: string): JsonValue {
  let out = "";
  let last = 0;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) { // string: skip to its closing quote
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 0x5c) i += 2;
        else if (d === 0x22) break;
        else i++;
      }
      i++;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      const start = i;
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if ((d >= 0x30 && d <= 0x39) || d === 0x2e || d === 0x65 || d === 0x45 || d === 0x2b || d === 0x2d) i++;
        else break;
      }
      const num = text.slice(start, i);
      if (/^-?\d{16,}$/.test(num) && !Number.isSafeInteger(Number(num))) {
        out += text.slice(last, start) + '"' + num + '"';
        last = i;
      }
    } else {
      i++;
    }
  }
  return JSON.parse(last === 0 ? text : out + text.slice(last)) as JsonValue;
}

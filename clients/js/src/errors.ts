// Errors the client reports. Act on fatal/retryable, not on a list of
// codes (protocol.md §5, "Client handling").

/** Error codes of protocol.md §5, by name. */
export const Code = {
  BAD_MAGIC: 1, UNSUPPORTED_VERSION: 2, UNKNOWN_SERIALIZER: 3, FRAME_TOO_LARGE: 4, BAD_BODY: 5,
  UNKNOWN_COMMAND: 6, NOT_LOGGED_IN: 7, ALREADY_LOGGED_IN: 8, INVALID_ARGUMENT: 9, AUTH_FAILED: 10,
  TOKEN_EXPIRED: 11, USER_EXISTS: 12, UNKNOWN_RECIPIENT: 20, UNKNOWN_GROUP: 21, NOT_GROUP_MEMBER: 22,
  GROUP_FULL: 23, UNKNOWN_MESSAGE: 24, NOT_SENDER: 25, RECALL_EXPIRED: 26, NOT_GROUP_ADMIN: 27,
  NOT_GROUP_OWNER: 28, GROUP_INVITE_ONLY: 29, RATE_LIMITED: 30,
  SLOW_CONSUMER: 31, TOO_MANY_CONNECTIONS: 32, LOGIN_TIMEOUT: 33, IDLE_TIMEOUT: 34,
  STORE_UNAVAILABLE: 40, FORWARD_FAILED: 41, INTERNAL: 42, SHUTTING_DOWN: 43, BUSY: 44, UNSUPPORTED: 45,
  KICK_DUPLICATE_LOGIN: 50, KICK_ADMIN: 51, KICK_LOGOUT: 52,
} as const;

const names = new Map<number, string>(Object.entries(Code).map(([k, v]) => [v, k]));

/** codeName returns the name of an error code, or "CODE_<n>" for one this client does not know. */
export function codeName(code: number): string {
  return names.get(code) ?? `CODE_${code}`;
}

/** ImgnError is an ERROR frame from the server. */
export class ImgnError extends Error {
  constructor(
    readonly code: number,
    readonly detail: string,
    readonly retryable: boolean,
    readonly retryAfterMs: number,
    readonly fatal: boolean,
  ) {
    super(`${codeName(code)}${detail ? ": " + detail : ""}`);
    this.name = "ImgnError";
  }
}

/** ConnectionLost fails a request whose connection closed before its reply came. */
export class ConnectionLost extends Error {
  constructor(reason: string) {
    super(`connection lost: ${reason}`);
    this.name = "ConnectionLost";
  }
}

/** ClientClosed fails what is pending when close() is called. */
export class ClientClosed extends Error {
  constructor() {
    super("client closed");
    this.name = "ClientClosed";
  }
}

// The WebSocket under a Client: the browser's (or Node's global one), else
// npm "ws" (Node 20 has no global WebSocket). Binary messages only; the
// node's subprotocol imgn.v1 is offered (protocol.md §10.2).

/** The part of the WebSocket API the client uses; browsers' and npm ws's both fit. */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Socket is an open WebSocket that delivers its binary payloads as bytes. */
export interface Socket {
  send(b: Uint8Array): void;
  close(): void;
}

let wsModule: Promise<WebSocketConstructor> | undefined;

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return g;
  // Node without a global WebSocket; the module name is hidden from bundlers
  const name = "ws";
  wsModule ??= import(/* @vite-ignore */ name).then((m) => (m.default ?? m.WebSocket) as WebSocketConstructor);
  return wsModule;
}

/**
 * openSocket connects to url and resolves once the WebSocket is open. After
 * that onData gets each binary message and onClose is called once, when
 * the socket closes for any reason other than close().
 */
export async function openSocket(
  url: string,
  ctor: WebSocketConstructor | undefined,
  h: { onData: (b: Uint8Array) => void; onClose: (why: string) => void },
  openTimeoutMs = 10_000,
): Promise<Socket> {
  const WS = ctor ?? (await defaultWebSocket());
  return new Promise((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = new WS(url, "imgn.v1");
    } catch (e) {
      reject(e as Error);
      return;
    }
    ws.binaryType = "arraybuffer";
    let open = false;
    let closedByUs = false;
    const timer = setTimeout(() => {
      closedByUs = true;
      ws.close();
      reject(new Error(`WebSocket ${url}: not open after ${openTimeoutMs} ms`));
    }, openTimeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      open = true;
      resolve({
        send: (b) => ws.send(b),
        close: () => {
          closedByUs = true;
          ws.onmessage = null;
          try {
            ws.close(1000);
          } catch {
            // already closing
          }
        },
      });
    };
    ws.onmessage = (ev) => {
      const d = ev.data;
      if (d instanceof ArrayBuffer) h.onData(new Uint8Array(d));
      else if (ArrayBuffer.isView(d)) h.onData(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      else h.onClose("text message from the server");
    };
    ws.onerror = () => {
      // the close event follows and says more
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      if (!open) {
        reject(new Error(`WebSocket ${url}: closed before open (code ${ev.code})`));
        return;
      }
      if (!closedByUs) h.onClose(`WebSocket closed (code ${ev.code}${ev.reason ? ", " + ev.reason : ""})`);
    };
  });
}

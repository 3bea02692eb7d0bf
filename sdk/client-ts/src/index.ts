/**
 * `@wsprism/client`: the browser and Node client of the wsPrism gateway.
 *
 * Layout: `client` (connection, requests, liveness) → `room` (membership and
 * recovery) → `envelope` / `hot` (codecs, no I/O) and `reconnect` (verdicts and
 * back-off, no timers); `socket` is the WebSocket surface; `emitter` the typed
 * events. No runtime dependencies.
 */

export {
  WsprismClient,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_LIVENESS_IDLE_MS,
  DEFAULT_LIVENESS_TIMEOUT_MS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type DisconnectInfo,
  type LivenessOptions,
  type RequestOptions,
  type SessionInfo,
} from "./client.js";
export {
  Room,
  type JoinInfo,
  type LeftInfo,
  type Member,
  type Position,
  type Presence,
  type ResetInfo,
  type ResetReason,
  type RoomEvents,
  type RoomOptions,
  type RoomState,
} from "./room.js";
export { WsprismError, type ClientErrorCode, type ErrorCode, type GatewayErrorCode, type WsprismErrorInit } from "./errors.js";
export { decodeEnvelope, encodeEnvelope, type Envelope, type OutgoingEnvelope } from "./envelope.js";
export { decodeHot, encodeHot, STAMPED_FLAG, type HotFrame, type HotPayload } from "./hot.js";
export {
  backoffDelay,
  CloseCode,
  DEFAULT_INITIAL_DELAY_MS,
  DEFAULT_MAX_DELAY_MS,
  DEFAULT_RESET_AFTER_MS,
  verdictForClose,
  verdictForStatus,
  type BackoffOptions,
  type Verdict,
} from "./reconnect.js";
export {
  endpointUrl,
  wsHandshakeInspector,
  type HandshakeInspector,
  type ReportStatus,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./socket.js";
export { Emitter, type Listener, type Unsubscribe } from "./emitter.js";

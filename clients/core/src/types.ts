/**
 * The API's JSON shapes, named. REST shapes come from the generated OpenAPI
 * types (src/generated/api.ts, `npm run gen`); gateway-only payloads follow
 * spec/gateway.md, which the OpenAPI document does not describe.
 */
import type { components } from "./generated/api.ts";

type Schemas = components["schemas"];

export type User = Schemas["User"];
export type CurrentUser = Schemas["CurrentUser"];
export type Server = Schemas["Server"];
export type Channel = Schemas["Channel"];
export type ChannelKind = Schemas["ChannelKind"];
export type PermissionOverride = Schemas["PermissionOverride"];
export type Role = Schemas["Role"];
export type Member = Schemas["Member"];
export type Message = Schemas["Message"];
export type Attachment = Schemas["Attachment"];
export type ReactionSummary = Schemas["ReactionSummary"];
export type Invite = Schemas["Invite"];
export type Ban = Schemas["Ban"];
export type Session = Schemas["Session"];
export type AuthResponse = Schemas["AuthResponse"];
export type EffectivePermissions = Schemas["EffectivePermissions"];
export type SearchResponse = Schemas["SearchResponse"];
export type ErrorBody = Schemas["ErrorBody"];
export type ExportedKey = Schemas["ExportedKey"];
export type NodeDescription = Schemas["NodeDescription"];

export type NewChannel = Schemas["NewChannel"];
export type ChannelPatch = Schemas["ChannelPatch"];
export type NewRole = Schemas["NewRole"];
export type RolePatch = Schemas["RolePatch"];
export type NewInvite = Schemas["NewInvite"];
export type ServerPatch = Schemas["ServerPatch"];
export type CreateServer = Schemas["CreateServer"];
export type OverrideInput = Schemas["OverrideInput"];
export type UpdateMeRequest = Schemas["UpdateMeRequest"];

/** `online`, `away`, `dnd`, `invisible`; others see `offline` too. */
export type Status = "online" | "away" | "dnd" | "invisible" | "offline";

/** A user's place in a voice channel (READY and VOICE_STATE_UPDATE; spec/voice.md). */
export interface VoiceState {
  user_id: string;
  server_id: string;
  channel_id: string;
  self_mute: boolean;
  self_deaf: boolean;
  server_mute: boolean;
  server_deaf: boolean;
  joined_at: string;
}

/** VOICE_STATE_UPDATE when a user leaves voice. */
export interface VoiceLeave {
  user_id: string;
  server_id: string;
  channel_id: null;
}

/** An ICE server for the voice connection (`ice_servers` of VOICE_OFFER). */
export interface IceServer {
  urls: string[] | string;
  username?: string | null;
  credential?: string | null;
}

/** Which participant a media section of a VOICE_OFFER carries. */
export interface VoiceTrack {
  mid: string;
  user_id: string;
  session_id?: string;
}

/** VOICE_OFFER: the node's SDP offer for this session's voice connection. */
export interface VoiceOffer {
  voice_session: string;
  negotiation: number;
  channel_id: string;
  sdp: string;
  tracks: VoiceTrack[];
  ice_servers?: IceServer[];
}

export interface VoiceSpeaking {
  channel_id: string;
  user_id: string;
  speaking: boolean;
}

/** VOICE_SESSION_END: `connect_timeout`, `answer_timeout`, `connection_failed` or `closed`. */
export interface VoiceSessionEnd {
  voice_session: string;
  reason: string;
}

/** VOICE_ERROR: the node refused a voice op (`code` as in the REST API's errors). */
export interface VoiceError {
  op: number;
  code: string;
  message: string;
  voice_session?: string;
  channel_id?: string;
}

export interface Presence {
  user_id: string;
  status: Status;
  custom_status?: string | null;
}

/** One server as READY and SERVER_CREATE carry it. */
export interface ReadyServer {
  server: Server;
  channels: Channel[];
  roles: Role[];
  member: Member;
  member_count: number;
  /** More than 250 connected members: `presences` is empty; fetch them over REST. */
  large?: boolean;
  presences: Presence[];
  voice_states: VoiceState[];
}

export interface Ready {
  v: number;
  session_id: string;
  user: CurrentUser;
  servers: ReadyServer[];
}

export interface MessageDeleted { id: string; channel_id: string; server_id: string }
export interface ReactionEvent { message_id: string; channel_id: string; server_id: string; user_id: string; emoji: string }
export interface TypingStart { channel_id: string; server_id: string; user_id: string; timestamp: string; expires_at: string }
export interface ChannelDeleted { id: string; server_id: string }
export interface ServerDeleted { id: string }
export interface ServerUserEvent { server_id: string; user: User }
export interface RoleEvent { server_id: string; role: Role }
export interface RoleDeleted { server_id: string; role_id: string }

/** Every dispatch event of spec/gateway.md with its payload. */
export interface DispatchMap {
  READY: Ready;
  RESUMED: Record<string, never>;
  MESSAGE_CREATE: Message;
  MESSAGE_UPDATE: Message;
  MESSAGE_DELETE: MessageDeleted;
  MESSAGE_REACTION_ADD: ReactionEvent;
  MESSAGE_REACTION_REMOVE: ReactionEvent;
  TYPING_START: TypingStart;
  CHANNEL_CREATE: Channel;
  CHANNEL_UPDATE: Channel;
  CHANNEL_DELETE: ChannelDeleted;
  SERVER_CREATE: ReadyServer;
  SERVER_UPDATE: Server;
  SERVER_DELETE: ServerDeleted;
  SERVER_MEMBER_ADD: Member;
  SERVER_MEMBER_UPDATE: Member;
  SERVER_MEMBER_REMOVE: ServerUserEvent;
  SERVER_ROLE_CREATE: RoleEvent;
  SERVER_ROLE_UPDATE: RoleEvent;
  SERVER_ROLE_DELETE: RoleDeleted;
  SERVER_BAN_ADD: ServerUserEvent;
  SERVER_BAN_REMOVE: ServerUserEvent;
  PRESENCE_UPDATE: Presence;
  USER_UPDATE: CurrentUser | User;
  VOICE_STATE_UPDATE: VoiceState | VoiceLeave;
  VOICE_OFFER: VoiceOffer;
  VOICE_SPEAKING: VoiceSpeaking;
  VOICE_SESSION_END: VoiceSessionEnd;
  VOICE_ERROR: VoiceError;
}

export type DispatchName = keyof DispatchMap;

/** A dispatch as a tagged union: `{t: "MESSAGE_CREATE", d: Message}`. */
export type Dispatch = { [K in DispatchName]: { t: K; d: DispatchMap[K] } }[DispatchName];

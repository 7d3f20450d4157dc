/** The bar above the user panel while in voice: where, how it goes, mute, deafen, leave. */
import type { State } from "@together/core";
import { channelPath, linkHandler } from "../router.ts";
import { together } from "../sdk.ts";
import { useVoice } from "../voice.ts";
import { VOICE_STATUS_TEXT } from "./VoiceChannelView.tsx";

export function VoicePanel({ state }: { state: State }) {
  const voice = useVoice();
  if (voice.status === "idle" || !voice.channelId || !voice.serverId) return null;
  const channel = state.channels[voice.channelId];
  const server = state.servers[voice.serverId]?.server;
  const href = channelPath(voice.serverId, voice.channelId);
  return (
    <section className="voice-panel" aria-label="Voice connection">
      <div className="where">
        <strong className={`voice-status ${voice.status}`}>{VOICE_STATUS_TEXT[voice.status]}</strong>
        <a href={href} onClick={linkHandler(href)} className="muted small">
          {channel?.name ?? "voice"}{server ? ` / ${server.name}` : ""}
        </a>
      </div>
      <button className={`icon${voice.selfMute ? " on" : ""}`} aria-pressed={voice.selfMute} aria-label={voice.selfMute ? "Unmute" : "Mute"}
        title={voice.selfMute ? "Unmute" : "Mute"} onClick={() => together.voice.setMute(!voice.selfMute)}>{voice.selfMute ? "🔇" : "🎙"}</button>
      <button className={`icon${voice.selfDeaf ? " on" : ""}`} aria-pressed={voice.selfDeaf} aria-label={voice.selfDeaf ? "Undeafen" : "Deafen"}
        title={voice.selfDeaf ? "Undeafen" : "Deafen"} onClick={() => together.voice.setDeaf(!voice.selfDeaf)}>{voice.selfDeaf ? "🙉" : "🎧"}</button>
      <button className="icon danger-text" aria-label="Leave voice" title="Leave voice" onClick={() => together.voice.leave()}>✆</button>
    </section>
  );
}

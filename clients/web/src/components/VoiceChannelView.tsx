/**
 * A voice channel on screen: who is in it (speaking, muted, deafened),
 * join and leave, mute and deafen, microphone and speaker choice, and the
 * connection's packet counters.
 */
import { Fragment, useEffect, useState } from "react";
import { displayName, voiceMembers, isSpeaking, type Channel, type ServerEntry, type State, type VoiceState, type VoiceStats } from "@together/core";
import { together } from "../sdk.ts";
import type { Perms } from "../perms.ts";
import { canPickOutput, setInputDevice, setOutputDevice, useAudioDevices, useOutputDevice, useVoice } from "../voice.ts";

export const VOICE_STATUS_TEXT = {
  idle: "Not connected",
  joining: "Joining…",
  connecting: "Connecting…",
  connected: "Voice connected",
  reconnecting: "Reconnecting…",
} as const;

function memberName(state: State, entry: ServerEntry | undefined, userId: string): string {
  const member = entry ? state.members[entry.server.id]?.[userId] : undefined;
  const known = displayName(member, state.users[userId]);
  return known === "unknown user" && state.me?.id === userId ? state.me.username : known;
}

export function voiceLabel(state: State, entry: ServerEntry | undefined, v: VoiceState): string {
  const name = memberName(state, entry, v.user_id);
  const flags = [
    isSpeaking(state, v.user_id, v.channel_id) ? "speaking" : null,
    v.self_deaf || v.server_deaf ? "deafened" : v.self_mute || v.server_mute ? "muted" : null,
  ].filter(Boolean);
  return flags.length ? `${name}, ${flags.join(", ")}` : name;
}

export function VoiceFlags({ v }: { v: VoiceState }) {
  return (
    <span className="voice-flags" aria-hidden="true">
      {(v.self_mute || v.server_mute) && !(v.self_deaf || v.server_deaf) && <span title="Muted">🔇</span>}
      {(v.self_deaf || v.server_deaf) && <span title="Deafened">🙉</span>}
    </span>
  );
}

export function VoiceChannelView({ state, entry, channel, perms, onMenu }: {
  state: State;
  entry: ServerEntry;
  channel: Channel;
  perms: Perms;
  onMenu: () => void;
}) {
  const voice = useVoice();
  const here = voice.channelId === channel.id && voice.status !== "idle";
  const members = voiceMembers(state, channel.id);
  const canConnect = perms.can("CONNECT_VOICE", "channel");
  const canSpeak = perms.can("SPEAK", "channel");

  return (
    <section className="pane voice-pane" aria-labelledby="voice-title">
      <header className="pane-head">
        <button className="icon menu-button" aria-label="Open menu" onClick={onMenu}>☰</button>
        <h1 id="voice-title">🔊 {channel.name}</h1>
        {here && <span className={`voice-status ${voice.status}`} role="status">{VOICE_STATUS_TEXT[voice.status]}</span>}
      </header>
      <div className="voice-body">
        {members.length === 0 ? (
          <p className="muted">Nobody is in this voice channel yet.</p>
        ) : (
          <ul className="voice-tiles" aria-label={`In ${channel.name}`}>
            {members.map((v) => {
              const speaking = isSpeaking(state, v.user_id, channel.id);
              const label = voiceLabel(state, entry, v);
              return (
                <li key={v.user_id} className={`voice-tile${speaking ? " speaking" : ""}`} aria-label={label}>
                  <span className="avatar large" aria-hidden="true">{[...label][0]?.toUpperCase()}</span>
                  <span className="name" aria-hidden="true">{label.split(",")[0]}</span>
                  <VoiceFlags v={v} />
                </li>
              );
            })}
          </ul>
        )}
        <div className="voice-controls" role="group" aria-label="Voice controls">
          {!here ? (
            <button className="primary" disabled={!canConnect || voice.unsupported || voice.status === "joining"}
              onClick={() => together.voice.join(entry.server.id, channel.id)}>
              {voice.status !== "idle" && voice.channelId ? "Switch to this channel" : "Join voice"}
            </button>
          ) : (
            <>
              <button aria-pressed={voice.selfMute} onClick={() => together.voice.setMute(!voice.selfMute)}>
                {voice.selfMute ? "Unmute" : "Mute"}
              </button>
              <button aria-pressed={voice.selfDeaf} onClick={() => together.voice.setDeaf(!voice.selfDeaf)}>
                {voice.selfDeaf ? "Undeafen" : "Deafen"}
              </button>
              <button className="danger" onClick={() => together.voice.leave()}>Leave voice</button>
            </>
          )}
        </div>
        {!canConnect && <p className="muted">You do not have permission to connect to this channel.</p>}
        {canConnect && !canSpeak && <p className="muted">You can listen here, but not speak.</p>}
        {voice.unsupported && <p className="muted">Voice is not available: this node does not offer voice connections yet. Text channels work as usual.</p>}
        {voice.error && <p className="error" role="alert">{voice.error}</p>}
        {voice.ended && !here && <p className="muted" role="status">{voice.ended}</p>}
        <DeviceSettings active={here} />
        {here && <ConnectionInfo nameOf={(userId) => memberName(state, entry, userId)} />}
      </div>
    </section>
  );
}

function DeviceSettings({ active }: { active: boolean }) {
  const voice = useVoice();
  const sink = useOutputDevice();
  const { inputs, outputs } = useAudioDevices(`${active}-${voice.hasMicrophone}`);
  return (
    <fieldset className="devices">
      <legend>Devices</legend>
      <label>
        Microphone
        <select value={voice.inputDeviceId ?? ""} onChange={(e) => setInputDevice(e.target.value || null)}>
          <option value="">Default microphone</option>
          {inputs.filter((d) => d.deviceId && d.deviceId !== "default").map((d, i) => (
            <option key={d.deviceId} value={d.deviceId}>{d.label || `Microphone ${i + 1}`}</option>
          ))}
        </select>
      </label>
      <label>
        Speaker
        <select value={sink} disabled={!canPickOutput} onChange={(e) => setOutputDevice(e.target.value)}>
          <option value="">Default speaker</option>
          {outputs.filter((d) => d.deviceId && d.deviceId !== "default").map((d, i) => (
            <option key={d.deviceId} value={d.deviceId}>{d.label || `Speaker ${i + 1}`}</option>
          ))}
        </select>
      </label>
      {!canPickOutput && <p className="muted small">This browser plays voice on its default speaker.</p>}
    </fieldset>
  );
}

function ConnectionInfo({ nameOf }: { nameOf: (userId: string) => string }) {
  const [stats, setStats] = useState<VoiceStats | null>(null);
  useEffect(() => {
    let live = true;
    const tick = () => together.voice.stats().then((s) => live && setStats(s), () => undefined);
    void tick();
    const t = setInterval(tick, 1000);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);
  if (!stats) return null;
  return (
    <details className="connection-info">
      <summary>Connection info</summary>
      <dl>
        <dt>Packets received</dt><dd data-testid="voice-packets-received">{stats.packetsReceived}</dd>
        {Object.entries(stats.receivedFrom).map(([userId, n]) => (
          <Fragment key={userId}>
            <dt className="sub">from {nameOf(userId)}</dt><dd data-testid={`voice-packets-from-${userId}`}>{n}</dd>
          </Fragment>
        ))}
        <dt>Packets sent</dt><dd data-testid="voice-packets-sent">{stats.packetsSent}</dd>
        <dt>Round trip</dt><dd>{stats.rttMs === null ? "not measured yet" : `${stats.rttMs} ms`}</dd>
      </dl>
    </details>
  );
}

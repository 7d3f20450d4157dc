/** Voice channels are listed, but this node has no voice signaling yet: say so plainly. */
import type { Channel } from "@together/core";

export function VoicePlaceholder({ channel, onMenu }: { channel: Channel; onMenu: () => void }) {
  return (
    <section className="empty" aria-labelledby="voice-title">
      <button className="icon menu-button" aria-label="Open menu" onClick={onMenu}>☰</button>
      <h1 id="voice-title">🔊 {channel.name}</h1>
      <p className="muted">Voice is not available in the web client yet: this node does not offer voice connections. Text channels work as usual.</p>
    </section>
  );
}

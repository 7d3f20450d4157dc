/** Plays the other participants' voices: one <audio> per remote track, silent while deafened, on the chosen speaker. */
import { useEffect, useRef } from "react";
import type { RemoteVoice } from "@together/core";
import { useOutputDevice, useVoice } from "../voice.ts";

export function VoiceAudio() {
  const voice = useVoice();
  const sink = useOutputDevice();
  if (voice.status === "idle") return null;
  return (
    <div hidden>
      {voice.remote.map((r) => <RemoteAudio key={`${voice.voiceSession}-${r.mid}-${r.track.id}`} voice={r} muted={voice.selfDeaf} sink={sink} />)}
    </div>
  );
}

function RemoteAudio({ voice, muted, sink }: { voice: RemoteVoice; muted: boolean; sink: string }) {
  const ref = useRef<HTMLAudioElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    el.srcObject = new MediaStream([voice.track]);
    el.play().catch(() => undefined);
    return () => {
      el.srcObject = null;
    };
  }, [voice.track]);
  useEffect(() => {
    const el = ref.current as (HTMLAudioElement & { setSinkId?: (id: string) => Promise<void> }) | null;
    el?.setSinkId?.(sink).catch(() => undefined);
  }, [sink]);
  return <audio ref={ref} autoPlay muted={muted} data-user={voice.userId} />;
}

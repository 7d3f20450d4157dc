/** React hooks over the SDK's voice client, and the audio devices of this browser. */
import { useEffect, useState, useSyncExternalStore } from "react";
import type { VoiceSnapshot } from "@together/core";
import { together } from "./sdk.ts";

const OUTPUT_KEY = "together.audioOutput";
const INPUT_KEY = "together.audioInput";

export function useVoice(): VoiceSnapshot {
  return useSyncExternalStore(together.voice.subscribe, together.voice.getSnapshot);
}

/** The chosen microphone, applied once at start (the voice client switches live later). */
export function restoreInputDevice(): void {
  const id = localStorage.getItem(INPUT_KEY);
  if (id) void together.voice.setInputDevice(id);
}

export function setInputDevice(id: string | null): void {
  if (id) localStorage.setItem(INPUT_KEY, id);
  else localStorage.removeItem(INPUT_KEY);
  void together.voice.setInputDevice(id);
}

const outputListeners = new Set<() => void>();

export function outputDevice(): string {
  return localStorage.getItem(OUTPUT_KEY) ?? "";
}

export function setOutputDevice(id: string): void {
  if (id) localStorage.setItem(OUTPUT_KEY, id);
  else localStorage.removeItem(OUTPUT_KEY);
  for (const l of outputListeners) l();
}

export function useOutputDevice(): string {
  return useSyncExternalStore((l) => {
    outputListeners.add(l);
    return () => outputListeners.delete(l);
  }, outputDevice);
}

/** Whether audio elements can pick their output device (setSinkId; Chromium has it). */
export const canPickOutput = typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;

/** Microphones and speakers, refreshed when devices change. Labels appear once the microphone is allowed. */
export function useAudioDevices(refreshKey: unknown): { inputs: MediaDeviceInfo[]; outputs: MediaDeviceInfo[] } {
  const [devices, setDevices] = useState<MediaDeviceInfo[]>([]);
  useEffect(() => {
    const md = navigator.mediaDevices;
    if (!md?.enumerateDevices) return;
    let live = true;
    const load = () => md.enumerateDevices().then((d) => live && setDevices(d), () => undefined);
    void load();
    md.addEventListener?.("devicechange", load);
    return () => {
      live = false;
      md.removeEventListener?.("devicechange", load);
    };
  }, [refreshKey]);
  return {
    inputs: devices.filter((d) => d.kind === "audioinput"),
    outputs: devices.filter((d) => d.kind === "audiooutput"),
  };
}

/**
 * The user key kept in this browser (localStorage), when the person chose
 * to keep it. It is stored as the key file's text, unencrypted: the pages
 * that offer saving say so plainly.
 */
import { importUserKey, type UserKey } from "@together/core";

const KEY_STORAGE = "together.userKey";

export const KEY_WARNING =
  "The key is kept unencrypted in this browser's storage. Anyone who can use this browser profile, and any script " +
  "that runs on this site, can read it and act as you on every node. Keep it only on a device you alone use, and " +
  "keep a copy of the key file somewhere safe: it is your account.";

export function savedKey(): UserKey | null {
  try {
    const text = localStorage.getItem(KEY_STORAGE);
    return text ? importUserKey(text) : null;
  } catch {
    return null;
  }
}

export function saveKey(key: UserKey): void {
  localStorage.setItem(KEY_STORAGE, key.toKeyFile());
}

export function forgetKey(): void {
  localStorage.removeItem(KEY_STORAGE);
}

/** Offers the key file as a download. */
export function downloadKeyFile(key: UserKey, name: string): void {
  const url = URL.createObjectURL(new Blob([key.toKeyFile()], { type: "text/plain" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${name.replace(/[^A-Za-z0-9_.-]+/g, "_") || "together"}.together-key`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A short form of a user id for people: its first 8 hex digits. */
export function shortId(userId: string): string {
  return userId.replace(/-/g, "").slice(0, 8);
}

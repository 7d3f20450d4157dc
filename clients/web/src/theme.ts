/** Light and dark themes: the system's choice unless the user picked one. */
import { useEffect, useState } from "react";

export type ThemeChoice = "system" | "light" | "dark";
const KEY = "together.theme";

function apply(choice: ThemeChoice) {
  if (choice === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = choice;
}

export function initTheme(): void {
  apply((localStorage.getItem(KEY) as ThemeChoice | null) ?? "system");
}

export function useTheme(): [ThemeChoice, () => void] {
  const [choice, setChoice] = useState<ThemeChoice>(() => (localStorage.getItem(KEY) as ThemeChoice | null) ?? "system");
  useEffect(() => {
    apply(choice);
    if (choice === "system") localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, choice);
  }, [choice]);
  const cycle = () => setChoice((c) => (c === "system" ? "dark" : c === "dark" ? "light" : "system"));
  return [choice, cycle];
}

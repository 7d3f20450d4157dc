/**
 * Token handling: holds the access and refresh tokens of one session,
 * rotates them on `token_expired` (once for many concurrent requests), and
 * tells the app when the session is gone.
 */
import { ApiError, NetworkError } from "./errors.ts";
import type { AuthResponse } from "./types.ts";

export interface Tokens {
  access_token: string;
  refresh_token: string;
  session_id: string;
}

/** Where tokens live between page loads (localStorage in browsers). */
export interface TokenStorage {
  load(): Tokens | null;
  save(tokens: Tokens | null): void;
}

export function memoryStorage(initial: Tokens | null = null): TokenStorage {
  let value = initial;
  return { load: () => value, save: (t) => { value = t; } };
}

export function localStorageTokens(key = "together.tokens"): TokenStorage {
  return {
    load() {
      try {
        const raw = globalThis.localStorage?.getItem(key);
        return raw ? (JSON.parse(raw) as Tokens) : null;
      } catch {
        return null;
      }
    },
    save(tokens) {
      if (tokens) globalThis.localStorage?.setItem(key, JSON.stringify(tokens));
      else globalThis.localStorage?.removeItem(key);
    },
  };
}

type Listener = (tokens: Tokens | null) => void;

/**
 * The request header that asks the node to keep the refresh token in an
 * HttpOnly cookie (spec/rest.md §2): for a web page served by the node
 * itself, so that scripts never hold the 30-day token.
 */
export const REFRESH_COOKIE_HEADER = "together-refresh-cookie";

/** Codes after which the session cannot continue without a new sign-in. */
const DEAD_SESSION_CODES = new Set(["invalid_refresh_token", "refresh_token_reused", "session_revoked", "invalid_token"]);

export class TokenManager {
  private tokens: Tokens | null;
  private refreshing: Promise<Tokens> | null = null;
  private listeners = new Set<Listener>();

  constructor(
    private readonly baseUrl: string,
    private readonly storage: TokenStorage = memoryStorage(),
    private readonly fetchImpl: typeof fetch = (...args) => globalThis.fetch(...args),
    /** The refresh token lives in the node's HttpOnly cookie, not here. */
    readonly refreshCookie = false,
  ) {
    this.tokens = storage.load();
  }

  get current(): Tokens | null {
    return this.tokens;
  }

  get accessToken(): string | null {
    return this.tokens?.access_token ?? null;
  }

  /** Stores the tokens of a fresh sign-in or refresh. */
  set(auth: AuthResponse | Tokens | null): void {
    this.tokens = auth
      ? { access_token: auth.access_token, refresh_token: auth.refresh_token, session_id: auth.session_id }
      : null;
    this.storage.save(this.tokens);
    for (const l of this.listeners) l(this.tokens);
  }

  /** Called with the new tokens after each change; `null` means signed out. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Trades the refresh token for new tokens. Concurrent callers share one
   * request, because a refresh token works only once (reuse signs out).
   */
  refresh(): Promise<Tokens> {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  /** Whether an error means the session is over (sign in again). */
  static isSessionDead(err: unknown): boolean {
    return err instanceof ApiError && err.status === 401 && DEAD_SESSION_CODES.has(err.code);
  }

  private async doRefresh(): Promise<Tokens> {
    const current = this.tokens;
    if (!current) throw new ApiError(401, "invalid_refresh_token", "you are signed out; sign in again");
    let res: Response;
    try {
      res = await this.fetchImpl(`${this.baseUrl}/api/auth/refresh`, {
        method: "POST",
        headers: this.refreshCookie
          ? { "content-type": "application/json", [REFRESH_COOKIE_HEADER]: "1" }
          : { "content-type": "application/json" },
        // With the cookie the node reads the token from it.
        body: JSON.stringify({ refresh_token: this.refreshCookie ? "" : current.refresh_token }),
        credentials: "same-origin",
      });
    } catch {
      throw new NetworkError();
    }
    if (!res.ok) {
      const err = await ApiError.fromResponse(res);
      // Another tab may have rotated the tokens meanwhile: prefer what storage has now.
      const stored = this.storage.load();
      if (stored && (stored.refresh_token !== current.refresh_token || stored.access_token !== current.access_token)) {
        this.tokens = stored;
        return stored;
      }
      if (err.status === 401) this.set(null);
      throw err;
    }
    const auth = (await res.json()) as AuthResponse;
    this.set(auth);
    return this.tokens as Tokens;
  }
}

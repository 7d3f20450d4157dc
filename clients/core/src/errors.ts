/** Errors the SDK surfaces: the node's `{code, message}` bodies, and network failures. */

/** An error answered by the node: HTTP status plus its stable `code` and human `message`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** Seconds to wait before retrying (429 responses). */
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, retryAfter: number | null = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** Builds an ApiError from a failed response, whatever its body. */
  static async fromResponse(res: Response): Promise<ApiError> {
    const retry = res.headers.get("retry-after");
    const retryAfter = retry && /^\d+$/.test(retry) ? Number(retry) : null;
    let body: unknown = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    return ApiError.fromBody(res.status, body, retryAfter);
  }

  static fromBody(status: number, body: unknown, retryAfter: number | null = null): ApiError {
    if (body && typeof body === "object" && "code" in body && "message" in body) {
      const b = body as { code: unknown; message: unknown };
      return new ApiError(status, String(b.code), String(b.message), retryAfter);
    }
    return new ApiError(status, `http_${status}`, `the node answered ${status} without an explanation`, retryAfter);
  }
}

/** The node could not be reached at all. */
export class NetworkError extends Error {
  constructor(message = "cannot reach the node; check your connection") {
    super(message);
    this.name = "NetworkError";
  }
}

/** Words for a person, for any error the SDK throws. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError || err instanceof NetworkError) return err.message;
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * An attachment. Downloads need the bearer token, so images are fetched
 * with it and shown from a blob URL; other files download on click.
 */
import { useEffect, useState } from "react";
import { describeError, type Attachment } from "@together/core";
import { together } from "../sdk.ts";

function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

const blobCache = new Map<string, Promise<string>>();

function blobUrl(a: Attachment): Promise<string> {
  let p = blobCache.get(a.id);
  if (!p) {
    p = together.rest.fetchAttachment(a.url).then((b) => URL.createObjectURL(b));
    p.catch(() => blobCache.delete(a.id));
    blobCache.set(a.id, p);
  }
  return p;
}

export function AttachmentView({ attachment: a }: { attachment: Attachment }) {
  const image = a.content_type.startsWith("image/") && a.content_type !== "image/svg+xml";
  const [src, setSrc] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (!image) return;
    let live = true;
    blobUrl(a).then((u) => live && setSrc(u), (e) => live && setError(describeError(e)));
    return () => {
      live = false;
    };
  }, [a.id, image]);

  async function download() {
    try {
      const url = await blobUrl(a);
      const link = document.createElement("a");
      link.href = url;
      link.download = a.filename;
      link.click();
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <figure className="attachment">
      {image && src && (
        <button className="image-button" onClick={() => window.open(src, "_blank", "noopener")} aria-label={`Open image ${a.filename}`}>
          <img src={src} alt={a.filename} loading="lazy" />
        </button>
      )}
      {image && !src && !error && <div className="image-placeholder" role="status">Loading image…</div>}
      <figcaption className="file-row">
        <span aria-hidden="true">📎</span>
        <button className="link" onClick={download}>{a.filename}</button>
        <span className="muted small">{size(a.size)}</span>
      </figcaption>
      {error && <p className="error small" role="alert">{error}</p>}
    </figure>
  );
}

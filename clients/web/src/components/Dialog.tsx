/** A modal dialog on the native <dialog>: focus moves in, Escape closes, focus returns. */
import { useEffect, useId, useRef, type ReactNode } from "react";

export function Dialog({ title, onClose, children, wide }: { title: string; onClose: () => void; children: ReactNode; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    const opener = document.activeElement as HTMLElement | null;
    if (dialog && !dialog.open) dialog.showModal();
    return () => {
      dialog?.close();
      opener?.focus?.();
    };
  }, []);
  return (
    <dialog
      ref={ref}
      className={wide ? "dialog wide" : "dialog"}
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      onClick={(e) => {
        if (e.target === ref.current) onClose();
      }}
    >
      <header className="dialog-head">
        <h2 id={titleId}>{title}</h2>
        <button className="icon" onClick={onClose} aria-label="Close">✕</button>
      </header>
      <div className="dialog-body">{children}</div>
    </dialog>
  );
}

export function Confirm({ title, text, action, onConfirm, onClose }: { title: string; text: ReactNode; action: string; onConfirm: () => Promise<void> | void; onClose: () => void }) {
  return (
    <Dialog title={title} onClose={onClose}>
      <div>{text}</div>
      <div className="dialog-actions">
        <button onClick={onClose}>Cancel</button>
        <button
          className="danger"
          autoFocus
          onClick={async () => {
            await onConfirm();
            onClose();
          }}
        >
          {action}
        </button>
      </div>
    </Dialog>
  );
}

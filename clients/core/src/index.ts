/** @together/core: the TypeScript SDK of Together (REST, gateway, state). */
export * from "./types.ts";
export * from "./errors.ts";
export * from "./tokens.ts";
export * from "./rest.ts";
export * from "./gateway.ts";
export * from "./store.ts";
export * from "./permissions.ts";
export * from "./client.ts";
export * from "./voice.ts";
export * from "./identity.ts";
export * from "./invites.ts";
export type { paths, components } from "./generated/api.ts";

import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API and gateway to a running node:
// TOGETHER_NODE=http://127.0.0.1:8080 (the default) npm run dev
const node = process.env.TOGETHER_NODE ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      "/api": node,
      "/health": node,
      "/gateway": { target: node.replace(/^http/, "ws"), ws: true },
    },
  },
  // No source maps in the build the node serves: they would publish the
  // whole source (the node refuses to serve *.map files anyway).
  build: { outDir: "dist", sourcemap: false, chunkSizeWarningLimit: 1000 },
});

// Fails when src/generated/api.ts does not match what openapi-typescript
// makes of spec/openapi.json now (run `npm run gen` and commit the result).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "together-gen-"));
const fresh = join(dir, "api.ts");
try {
  execFileSync("npx", ["openapi-typescript", "../../spec/openapi.json", "-o", fresh], { stdio: "ignore" });
  const committed = readFileSync("src/generated/api.ts", "utf8");
  if (committed !== readFileSync(fresh, "utf8")) {
    console.error("clients/core/src/generated/api.ts is out of date with spec/openapi.json: run `npm run gen` in clients/ and commit it.");
    process.exit(1);
  }
  console.log("generated REST types match spec/openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// playwright-core, resolved from NODE_PATH only ($TALLY_PLAYWRIGHT_NODE_PATH): ES modules
// ignore NODE_PATH, so it is looked up in its entries here. Throws when it is not there.
import { createRequire } from "node:module";
import path from "node:path";

export function loadPlaywright() {
  const dirs = (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean);
  if (!dirs.length) throw new Error("NODE_PATH is not set (use NODE_PATH=$TALLY_PLAYWRIGHT_NODE_PATH)");
  const require = createRequire(import.meta.url);
  for (const dir of dirs) {
    let resolved;
    try {
      resolved = require.resolve("playwright-core", { paths: [dir] });
    } catch {
      continue;
    }
    if (!path.resolve(resolved).startsWith(path.resolve(dir) + path.sep)) continue;
    return require(resolved);
  }
  throw new Error(`playwright-core is not in NODE_PATH (${dirs.join(path.delimiter)}); run e2e/scripts/install-servers.sh`);
}

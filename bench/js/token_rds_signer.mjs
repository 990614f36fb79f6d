// Peer for bench/run: @aws-sdk/rds-signer Signer.getAuthToken, awaited in a loop.
// node token_rds_signer.mjs ROUNDS ITERS  ->  "node_rds_signer ns/token per round" (wall), "node_rds_signer_cpu" (process CPU)
import { createRequire } from "node:module";
import { Signer } from "@aws-sdk/rds-signer";

const require = createRequire(import.meta.url);
const [rounds, iters] = [Number(process.argv[2] || 5), Number(process.argv[3] || 5000)];
const signer = new Signer({
  hostname: "bench-db.abc123.us-east-1.rds.amazonaws.com",
  port: 5432,
  username: "iam_user",
  region: "us-east-1",
  credentials: {
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
  },
});

const first = await signer.getAuthToken();
if (!first.includes("X-Amz-Signature=")) throw new Error("unexpected token " + first);
console.log("version_rds_signer " + require("@aws-sdk/rds-signer/package.json").version);

const out = [], cpu = [];
for (let r = 0; r <= rounds; r++) { // round 0 is a warm-up (JIT)
  const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
  for (let i = 0; i < iters; i++) {
    await signer.getAuthToken();
  }
  const dt = Number(process.hrtime.bigint() - t0), dc = process.cpuUsage(c0);
  if (r > 0) {
    out.push((dt / iters).toFixed(1));
    cpu.push((((dc.user + dc.system) * 1000) / iters).toFixed(1)); // process CPU, all threads
  }
}
console.log("node_rds_signer " + out.join(" "));
console.log("node_rds_signer_cpu " + cpu.join(" "));

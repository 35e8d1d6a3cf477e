/**
 * The package publishes to JSR as it is: `deno publish --dry-run` passes without
 * `--allow-slow-types` (explicit types on the public API), ships the Apache-2.0 LICENSE, and
 * leaves out tests, benchmarks, CI and run folders (deno.json's publish.include / exclude).
 */
import { equal, ok } from "node:assert/strict";

const root = new URL("../", import.meta.url).pathname;

Deno.test("deno publish --dry-run: no slow types, a LICENSE, no tests or fixtures shipped", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  equal(r.code, 0, text);
  ok(text.includes("Dry run complete"), text);
  const files = [...text.matchAll(/file:\/\/\S+/g)].map((m) => m[0].slice(`file://${root}`.length));
  ok(files.includes("LICENSE") && files.includes("mod.ts") && files.includes("deno.json"), text);
  const shipped = (prefix: string) => files.filter((f) => f.startsWith(prefix));
  for (const left of ["tests/", "bench/", ".ci/", "runs/"]) equal(shipped(left).length, 0, left);
  equal(files.filter((f) => f.endsWith("_test.ts")).length, 0, "no test files");
  ok(shipped("tasks/").length > 0 && shipped("methods/").length > 0);
  const license = await Deno.readTextFile(`${root}LICENSE`);
  ok(license.includes("Apache License") && license.includes("Version 2.0, January 2004"));
  ok(license.includes("END OF TERMS AND CONDITIONS"), "the full text, not a pointer to it");
});

Deno.test("every exported entry point runs from another folder (--help, no cwd-relative imports)", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${root}deno.json`));
  const elsewhere = await Deno.makeTempDir({ prefix: "entry-cwd-" });
  try {
    const entries = Object.entries(config.exports as Record<string, string>)
      .filter(([name]) => name !== ".");
    ok(entries.length >= 8, "train, evaluate, download, generate, convert, merge, sweep, report");
    for (const [name, file] of entries) {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--no-check", new URL(file, `file://${root}`).pathname, "--help"],
        cwd: elsewhere,
        env: { NO_COLOR: "1", XDG_RUNTIME_DIR: "/tmp" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
      equal(r.code, 0, `${name}: ${out}`);
      ok(/usage:/.test(out), `${name} prints its usage: ${out.slice(0, 200)}`);
    }
  } finally {
    await Deno.remove(elsewhere, { recursive: true });
  }
});

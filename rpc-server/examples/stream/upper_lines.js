#!/usr/bin/env node
// An rpc-server handler for --protocol lines: a request is one line on stdin (its body), the
// reply is the next line written to stdout. The process stays up between requests.
//
//   rpc-server --queue upper --protocol lines -- node upper_lines.js
const lines = require("node:readline").createInterface({ input: process.stdin });
lines.on("line", (body) => process.stdout.write(body.toUpperCase() + "\n"));
// stdin closed (the server is stopping, or retiring this process): readline ends, node exits.

#!/usr/bin/env node
// An rpc-server handler for --protocol json: one JSON object per line each way. In: id, body
// (or body_base64), correlation_id, content_type, headers, and traceparent when the request is
// traced. Out: the same id with body (and content_type), or with error (an exec-failed error
// reply).
//
//   rpc-server --queue words --protocol json -- node words_json.js
const lines = require("node:readline").createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const request = JSON.parse(line);
  const reply = { id: request.id };
  if (request.body === undefined) {
    reply.error = "send text: this handler counts words";
  } else {
    const words = request.body.split(/\s+/).filter(Boolean).length;
    reply.body = JSON.stringify({ words, lang: request.headers?.lang ?? null });
    reply.content_type = "application/json";
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});

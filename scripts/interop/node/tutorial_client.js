#!/usr/bin/env node
// A RabbitMQ tutorial-six client in amqplib that reads replies as the tutorial does
// (written from the tutorial's wire contract, not copied): sends BODY as is to the queue
// with reply_to (an exclusive server-named callback queue) and a fresh correlation id, and
// no other property (nothing that asks for error replies); prints " [.] Got <body as text>"
// for the reply with that id, as the tutorial's rpc_client.js does. Unlike the tutorial,
// which waits for ever, it gives up after --timeout seconds.
//
// Usage: tutorial_client.js BODY [--queue Q] [--timeout S] (broker: $AMQP_URI or local).
// Exit status: 0 a reply printed, 1 no reply in time or an error.
'use strict';

const amqp = require('amqplib');
const { randomUUID } = require('crypto');

async function main(argv) {
  const args = { body: null, queue: 'rpc_queue', timeout: 5,
    url: process.env.AMQP_URI || 'amqp://guest:guest@localhost:5672/' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--queue') args.queue = argv[++i];
    else if (argv[i] === '--timeout') args.timeout = Number(argv[++i]);
    else args.body = argv[i];
  }
  if (args.body === null) throw new Error('usage: tutorial_client.js BODY [--queue Q] [--timeout S]');
  const connection = await amqp.connect(args.url);
  try {
    const channel = await connection.createChannel();
    const { queue } = await channel.assertQueue('', { exclusive: true });
    const correlationId = randomUUID();
    const reply = new Promise((resolve) => {
      channel.consume(queue, (msg) => {
        if (msg && msg.properties.correlationId === correlationId) resolve(msg);
      }, { noAck: true });
    });
    channel.sendToQueue(args.queue, Buffer.from(args.body), { correlationId, replyTo: queue });
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), args.timeout * 1000); });
    const msg = await Promise.race([reply, timeout]);
    clearTimeout(timer);
    if (msg === null) {
      process.stderr.write(`tutorial_client.js: no reply within ${args.timeout}s\n`);
      return 1;
    }
    console.log(' [.] Got %s', msg.content.toString()); // the tutorial's own line
    return 0;
  } finally {
    await connection.close();
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  process.stderr.write(`tutorial_client.js: ${err.message}\n`);
  process.exit(1);
});

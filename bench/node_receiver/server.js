// The Node/Express receiver of the widely copied webhook guide, as people copy it: parse the
// JSON body, log the trigger code and the body, answer 200. It stores nothing: an event it
// acknowledged is gone if the process stops. bench/ingest.py runs it as the target
// `node-express`, with stdout sent to /dev/null, beside the durable receiver.
//
//     node server.js [PORT]        (or WEBHOOK_PORT / PORT in the environment; default 3000)
//
// One process, as `node server.js` starts it: Node runs the JavaScript of every request on one
// thread, so this server uses one core however many the machine has (the cluster module, which
// such guides leave out, would fork one per core).

const express = require('express');

const app = express();

// The guide's body parser. Its default limit (100kb) answers 413 to Dolibarr's bigger bodies:
// an invoice of a few hundred lines, each serialised whole, weighs megabytes. Raised to the
// product's MAX_BODY_SIZE (16 MiB) so that both accept the same bodies.
app.use(express.json({ limit: '16mb' }));

// '/webhook' as in the guide, and '/webhook/<token>': the URL bench/ingest.py posts to every
// target (the product's secret is a path segment). The token is not checked: this receiver
// authenticates nothing.
app.post(['/webhook', '/webhook/:token'], (req, res) => {
  const event = req.body.triggercode || req.body.event;
  console.log(`Webhook received: ${event}`);
  console.log(JSON.stringify(req.body, null, 2));
  res.status(200).json({ status: 'ok' });
});

const port = Number(process.argv[2] || process.env.WEBHOOK_PORT || process.env.PORT || 3000);
// Loopback, as every server of the benchmarks (app.listen(port) alone listens on every address).
const host = process.env.HOST || '127.0.0.1';
app.listen(port, host, () => {
  console.error(`listening on http://${host}:${port}`);
});

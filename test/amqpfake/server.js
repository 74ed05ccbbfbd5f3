'use strict';
// A local AMQP 1.0 fake of the Service Bus operations flowscaler uses:
// SASL ANONYMOUS, CBS put-token on $cbs (SAS tokens are verified), the
// receiver attach on an entity, and com.microsoft:peek-message on the
// entity's $management node, including 204 for an empty entity.
//
// It checks flowscaler's use of the SDK against the documented wire format,
// not the service's behaviour.
//
//   node server.js --port 0 --config state.json
//
// The state file is read again on every request, so a test changes the
// fake by rewriting it (atomically):
//
//   {
//     "keyName": "RootManageSharedAccessKey", "key": "…",   // SAS tokens must be signed with it
//     "bearerToken": "…",                                     // or a jwt equal to this
//     "cbsStatus": 0,                                         // > 0: answer every put-token with it
//     "entities": {
//       "orders": {                                           // a queue, or "topic/Subscriptions/sub"
//         "peekDelayMs": 0, "peekStatus": 0, "peekCondition": "",
//         "messages": [{"sequenceNumber": 1, "enqueuedTime": "2026-01-01T00:00:00Z",
//                       "state": "active", "deliveryCount": 1, "body": "…"}]
//       }
//     }
//   }
//
// The first line on stdout is {"port": P}; then one JSON line per request
// handled ({"op": "peek", "entity": …}), which tests count.

const fs = require('fs');
const crypto = require('crypto');
const rhea = require('rhea');

const types = rhea.types;

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const port = Number(arg('port', '0'));
const host = arg('host', '127.0.0.1');
const configPath = arg('config', '');

function state() {
  if (!configPath) return { entities: {} };
  return JSON.parse(fs.readFileSync(configPath, 'utf8'));
}

function log(rec) {
  process.stdout.write(JSON.stringify(rec) + '\n');
}

// States of x-opt-message-state.
const messageStates = { active: 0, deferred: 1, scheduled: 2 };

// verifySAS checks a SharedAccessSignature token the way the service does:
// sig = base64(HMAC-SHA256(key, sr + "\n" + se)), skn the key's name, sr
// the audience, se not past.
function verifySAS(token, audience, st) {
  const prefix = 'SharedAccessSignature ';
  if (typeof token !== 'string' || !token.startsWith(prefix)) return 'not a SharedAccessSignature';
  // The signed string is the sr field as written in the token (the
  // lower-cased, query-escaped audience), a newline and se.
  const raw = {};
  for (const part of token.slice(prefix.length).split('&')) {
    const eq = part.indexOf('=');
    if (eq > 0) raw[part.slice(0, eq)] = part.slice(eq + 1);
  }
  if (raw.skn !== st.keyName) return 'unknown key name ' + raw.skn;
  const sr = decodeURIComponent(raw.sr || '');
  if (sr !== String(audience).toLowerCase()) return 'signed resource ' + sr + ' is not the audience ' + audience;
  if (Number(raw.se) * 1000 < Date.now()) return 'token expired';
  const want = crypto.createHmac('sha256', st.key || '').update(raw.sr + '\n' + raw.se).digest('base64');
  if (decodeURIComponent(raw.sig || '') !== want) return 'signature does not match';
  return '';
}

function putToken(msg, st) {
  const props = msg.application_properties || {};
  const audience = props.name;
  if (st.cbsStatus > 0) {
    return { status: st.cbsStatus, description: 'put-token refused by the test' };
  }
  let why = '';
  if (props.type === 'jwt') {
    why = st.bearerToken && msg.body === st.bearerToken ? '' : 'bearer token not accepted';
  } else if (props.type === 'servicebus.windows.net:sastoken') {
    why = verifySAS(msg.body, audience, st);
  } else {
    why = 'unknown token type ' + props.type;
  }
  if (why) return { status: 401, description: 'InvalidSignature: ' + why };
  return { status: 202, description: 'Accepted', audience: audience };
}

function encodePeeked(m) {
  const annotations = {
    'x-opt-sequence-number': types.wrap_long(m.sequenceNumber),
    'x-opt-enqueued-time': types.wrap_timestamp(Date.parse(m.enqueuedTime)),
    'x-opt-message-state': types.wrap_int(messageStates[m.state || 'active']),
  };
  if (m.state === 'scheduled' && m.scheduledEnqueueTime) {
    annotations['x-opt-scheduled-enqueue-time'] = types.wrap_timestamp(Date.parse(m.scheduledEnqueueTime));
  }
  return rhea.message.encode({
    // The header counts earlier deliveries; the SDK reports it plus one.
    delivery_count: Math.max((m.deliveryCount || 0) - 1, 0),
    message_annotations: annotations,
    message_id: 'm-' + m.sequenceNumber,
    body: rhea.message.data_section(Buffer.from(m.body || '')),
  });
}

function peek(entity, req, st) {
  const e = st.entities[entity];
  if (!e) return { status: 404, description: 'The messaging entity ' + entity + ' could not be found.', condition: 'com.microsoft:entity-not-found' };
  if (e.peekStatus > 0) return { status: e.peekStatus, description: 'peek refused by the test', condition: e.peekCondition || '' };
  const body = req.body || {};
  const from = Number(body['from-sequence-number']);
  const count = Number(body['message-count']);
  const found = (e.messages || [])
    .filter((m) => m.sequenceNumber >= from)
    .sort((a, b) => a.sequenceNumber - b.sequenceNumber)
    .slice(0, count);
  if (found.length === 0) return { status: 204, description: 'No Content' };
  return {
    status: 200,
    description: 'OK',
    body: { messages: found.map((m) => ({ message: encodePeeked(m) })) },
  };
}

const container = rhea.create_container({ id: 'flowscaler-amqpfake' });
container.sasl_server_mechanisms.enable_anonymous();

// Reply links by their target address, per connection: a request's
// reply_to names the link its answer goes to.
function replyLinks(connection) {
  if (!connection._replyLinks) connection._replyLinks = new Map();
  return connection._replyLinks;
}

function authorized(connection) {
  if (!connection._authorized) connection._authorized = new Set();
  return connection._authorized;
}

// entityOf maps a node address to the entity it belongs to.
function entityOf(address) {
  return address.endsWith('/$management') ? address.slice(0, -'/$management'.length) : address;
}

// isAuthorized: a put-token for the entity (or its $management node) was
// accepted on this connection. Audiences are sb:// or amqp:// URIs ending
// in the node address.
function isAuthorized(connection, address) {
  for (const aud of authorized(connection)) {
    if (aud.toLowerCase().endsWith('/' + address.toLowerCase())) return true;
  }
  return false;
}

// accept answers an attach with the peer's own source and target, as the
// service does; a link refused is answered without them and detached with
// the error (AMQP 1.0, 2.6.3).
function accept(link) {
  const a = link.remote.attach || {};
  link.set_source({ address: a.source && a.source.address });
  link.set_target({ address: a.target && a.target.address });
  // The settlement modes asked for are the ones granted.
  if (a.snd_settle_mode !== undefined) link.local.attach.snd_settle_mode = a.snd_settle_mode;
  if (a.rcv_settle_mode !== undefined) link.local.attach.rcv_settle_mode = a.rcv_settle_mode;
}

container.on('sender_open', (ctx) => {
  const source = ctx.sender.remote.attach.source && ctx.sender.remote.attach.source.address;
  const target = ctx.sender.remote.attach.target && ctx.sender.remote.attach.target.address;
  if (source === '$cbs' || (source && source.endsWith('/$management'))) {
    accept(ctx.sender);
    replyLinks(ctx.connection).set(target, ctx.sender);
    return;
  }
  // A receiver on an entity: the SDK attaches it before it peeks.
  const st = state();
  log({ op: 'attach', entity: source });
  if (!isAuthorized(ctx.connection, source)) {
    ctx.sender.close({ condition: 'amqp:unauthorized-access', description: 'no valid token for ' + source });
  } else if (!st.entities[source]) {
    ctx.sender.close({ condition: 'amqp:not-found', description: 'The messaging entity ' + source + ' could not be found.' });
  } else {
    accept(ctx.sender);
  }
});

container.on('receiver_open', (ctx) => {
  accept(ctx.receiver);
  ctx.receiver.add_credit(1000);
});

function reply(ctx, req, res) {
  const link = replyLinks(ctx.connection).get(req.reply_to);
  if (!link) {
    log({ op: 'error', error: 'no reply link for ' + req.reply_to });
    return;
  }
  const props = { statusCode: types.wrap_int(res.status), statusDescription: res.description };
  if (res.condition) props['error-condition'] = res.condition;
  link.send({
    correlation_id: req.message_id,
    application_properties: props,
    body: res.body === undefined ? null : res.body,
  });
}

container.on('message', (ctx) => {
  const req = ctx.message;
  const address = ctx.receiver.remote.attach.target && ctx.receiver.remote.attach.target.address;
  const op = (req.application_properties || {}).operation;
  const st = state();
  if (address === '$cbs' && op === 'put-token') {
    const res = putToken(req, st);
    if (res.status === 202) authorized(ctx.connection).add(res.audience);
    log({ op: 'put-token', audience: (req.application_properties || {}).name, status: res.status });
    reply(ctx, req, res);
    return;
  }
  if (address && address.endsWith('/$management') && op === 'com.microsoft:peek-message') {
    const entity = entityOf(address);
    const body = req.body || {};
    const rec = { op: 'peek', entity: entity, from: Number(body['from-sequence-number']), count: Number(body['message-count']) };
    if (!isAuthorized(ctx.connection, address)) {
      log(Object.assign(rec, { status: 401 }));
      reply(ctx, req, { status: 401, description: 'no valid token for ' + address });
      return;
    }
    const res = peek(entity, req, st);
    log(Object.assign(rec, { status: res.status }));
    const delay = (st.entities[entity] || {}).peekDelayMs || 0;
    setTimeout(() => reply(ctx, req, res), delay);
    return;
  }
  log({ op: 'unsupported', address: address, operation: op });
  reply(ctx, req, { status: 501, description: 'not supported by the fake: ' + op });
});

container.on('error', (ctx) => {
  log({ op: 'error', error: String(ctx.error) });
});
container.on('disconnected', () => {});

// credit_window 0: no automatic credit top-ups. The SDK detaches its
// request links right after an answer, and a flow frame for a link it is
// detaching is a protocol error to it; credit is granted once, on attach.
const server = container.listen({ port: port, host: host, credit_window: 0 });
server.on('listening', () => {
  log({ port: server.address().port });
});
server.on('error', (err) => {
  process.stderr.write('amqpfake: ' + err + '\n');
  process.exit(1);
});
process.on('SIGTERM', () => {
  server.close();
  process.exit(0);
});
